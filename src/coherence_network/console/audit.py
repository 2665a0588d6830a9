"""The audit page ("/audit"): who did what, through which channel, when and why, newest first; filtered by action,
actor or task and paged by the same cursor as GET /api/audit (records appended meanwhile never shift a page)."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from coherence_network.api.deps import MAX_ACTOR_CHARS, store_of
from coherence_network.api.routes_audit import MAX_ACTION_CHARS
from coherence_network.console.pages import PAGE_SIZE, error_page, render, visit_of
from coherence_network.request_bodies import INT32_MAX, storable_text

router = APIRouter(include_in_schema=False)


@router.get("/audit")
def audit_page(request: Request, action: str = "", actor: str = "", task_id: str = "",
               before_id: str = "") -> HTMLResponse:
    visit = visit_of(request)
    action, actor, task_id = action.strip(), actor.strip(), task_id.strip().removeprefix("#")
    numbers = {name: int(value) if value.isdigit() and 1 <= int(value) <= INT32_MAX else None
               for name, value in (("task", task_id), ("page", before_id)) if value}
    if None in numbers.values() or len(action) > MAX_ACTION_CHARS or len(actor) > MAX_ACTOR_CHARS \
            or storable_text(action + actor)[1]:
        return error_page(request, 400, "Unknown filter", f"A task is a number from 1 to {INT32_MAX}; an action is "
                          f"at most {MAX_ACTION_CHARS} characters and an actor {MAX_ACTOR_CHARS}, without NUL.", visit)
    items, next_before_id = store_of(request).audit_page(limit=PAGE_SIZE, before_id=numbers.get("page"),
                                                         action=action or None, actor=actor or None,
                                                         task_id=numbers.get("task"))
    kept = {k: v for k, v in {"action": action, "actor": actor, "task_id": task_id}.items() if v}
    older = f"/audit?{urlencode({**kept, 'before_id': next_before_id})}" if next_before_id else None
    newest = f"/audit?{urlencode(kept)}" if before_id else None
    return render(request, "audit.html", visit, items=items, action=action, actor=actor, task_id=task_id,
                  older=older, newest=newest)
