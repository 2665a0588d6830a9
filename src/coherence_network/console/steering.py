"""The console's pauses page: pause the whole pipeline or one task type (a reason is required) and resume each pause,
as ``console:<signed-in name>``. The API's request models check the form and the API's own pause_scope and
resume_scope act, so a pause from here is the same as one from the CLI or Telegram."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from coherence_network.api.deps import store_of
from coherence_network.api.routes_steering import pause_scope, resume_scope
from coherence_network.console.forms import posted_form, validated
from coherence_network.console.pages import error_page, render, visit_of
from coherence_network.contract import PAUSE_ALL, PAUSE_SCOPES
from coherence_network.request_bodies import PauseRequest, ResumeRequest

router = APIRouter(include_in_schema=False)
_BACK = ("/pauses", "Back to the pauses")
_NOTICES = {
    "paused": "Paused: runners get nothing of it now; tasks already running finish.",
    "kept": "Already paused: the first pause is kept as it was (since, by, reason).",
    "resumed": "Resumed: runners waiting for work get it at once.",
    "not-paused": "It was not paused: nothing changed.",
}


@router.get("/pauses")
def pauses_page(request: Request, notice: str = "") -> HTMLResponse:
    visit = visit_of(request)
    return render(request, "pauses.html", visit, pauses=store_of(request).pauses(), scopes=PAUSE_SCOPES,
                  notice=_NOTICES.get(notice))


def _body(scope: str, by: str, **fields: str) -> dict[str, str | None]:
    """A PauseRequest's or ResumeRequest's fields from the form's scope: ``all`` is no type."""
    return {"type": None if scope == PAUSE_ALL else scope, "by": by, **fields}


def _done(notice: str) -> RedirectResponse:
    return RedirectResponse(f"/pauses?{urlencode({'notice': notice})}", status_code=303)


@router.post("/pauses")
async def pause(request: Request) -> Response:
    """Pause the scope chosen (``all`` or a task type) with the reason given; 303 to the pauses page."""
    visit, fields = await posted_form(request)
    scope = fields.get("scope", "")
    if scope not in PAUSE_SCOPES:
        return error_page(request, 400, "Not paused", f"Choose what to pause: one of {', '.join(PAUSE_SCOPES)}.",
                          visit, _BACK)
    by = f"console:{visit.session.identity}"
    body = validated(PauseRequest, _body(scope, by, reason=fields.get("reason", "").strip()))
    if isinstance(body, list):
        return error_page(request, 422, "Not paused", body, visit, _BACK)
    answer = await run_in_threadpool(pause_scope, store_of(request), scope, body.by, body.reason)
    return _done("paused" if answer["changed"] else "kept")


@router.post("/pauses/{scope}/resume")
async def resume(request: Request, scope: str) -> Response:
    """Resume one pause (``all``: the whole pipeline's; a type's own pause stays until it is resumed too)."""
    visit, _ = await posted_form(request)
    if scope not in PAUSE_SCOPES:
        return error_page(request, 404, "Not resumed", f"No such scope {scope[:40]!r}: one of "
                          f"{', '.join(PAUSE_SCOPES)}.", visit, _BACK)
    body = validated(ResumeRequest, _body(scope, f"console:{visit.session.identity}"))
    if isinstance(body, list):
        return error_page(request, 422, "Not resumed", body, visit, _BACK)
    answer = await run_in_threadpool(resume_scope, store_of(request), scope, body.by)
    return _done("resumed" if answer["changed"] else "not-paused")
