"""The task pages: the list (filter, search, sort), one task with its log, creating a task, answering, cancelling
and retrying one, and the decisions waiting."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from coherence_network.api.deps import store_of
from coherence_network.api.models import TaskId, refuse_disallowed_commands
from coherence_network.api.routes_tasks import read_log_end
from coherence_network.clock import utcnow
from coherence_network.console.forms import act_on_task, posted_form, validated
from coherence_network.console.pages import PAGE_SIZE, error_page, page_links, render, settings_of, visit_of
from coherence_network.console.session import local_path
from coherence_network.contract import TaskStatus, TaskType, parse_sort
from coherence_network.logfiles import task_log_path
from coherence_network.request_bodies import CancelRequest, TaskCreateItem, TaskPatch, storable_text
from coherence_network.settings import Settings
from coherence_network.store import Conflict, NotFound
from coherence_network.store.search import COUNT_CAP, MAX_QUERY_CHARS

router = APIRouter(include_in_schema=False)
LOG_LINES_SHOWN = 400
AUDIT_SHOWN = 20  # a task's newest audit records on its page; the audit page has them all


# The list's sortable columns as its headers name them; a first click sorts text up, numbers and times newest first.
_SORTABLE = {"id": "Task", "task_type": "Type", "status": "Status", "priority": "Priority",
             "created_at": "Created", "updated_at": "Updated", "attempts": "Attempts"}
_FIRST_DESCENDING = frozenset({"id", "priority", "created_at", "updated_at", "attempts"})


def _sort_headers(params: dict[str, str], column: str, descending: bool) -> dict[str, dict[str, str | None]]:
    """Per sortable column: the link that sorts by it (the active one's flips its direction), its aria-sort and
    its arrow when active. Sorting starts again at the first page, keeping the filter and the search."""
    headers: dict[str, dict[str, str | None]] = {}
    for name, label in _SORTABLE.items():
        active = name == column
        down = not descending if active else name in _FIRST_DESCENDING
        key = "" if (name, down) == ("id", True) else f"{'-' if down else ''}{name}"  # the default stays unnamed
        query = urlencode({k: v for k, v in {**params, "sort": key}.items() if v})
        headers[name] = {"label": label, "href": f"/tasks?{query}" if query else "/tasks",
                         "aria": ("descending" if descending else "ascending") if active else None,
                         "arrow": ("▼" if descending else "▲") if active else None}
    return headers


@router.get("/tasks")
def tasks_page(request: Request, status: str = "", task_type: str = "", q: str = "", sort: str = "",
               offset: int = 0, out_of_attempts: bool = False) -> HTMLResponse:
    visit = visit_of(request)
    try:
        chosen_status = TaskStatus(status) if status else None
        chosen_type = TaskType(task_type) if task_type else None
        column, descending = parse_sort(sort) if sort else ("id", True)
    except ValueError as exc:
        return error_page(request, 400, "Unknown filter", str(exc), visit)
    q = q.strip()
    if len(q) > MAX_QUERY_CHARS or storable_text(q)[1]:
        return error_page(request, 400, "Bad search", f"A search is at most {MAX_QUERY_CHARS} characters, without "
                          "NUL characters or lone surrogates.", visit)
    offset = min(max(offset, 0), 2**31 - 1)
    items, total = store_of(request).list(status=chosen_status, task_type=chosen_type, search=q or None, sort=column,
                                        descending=descending, limit=PAGE_SIZE, offset=offset,
                                        out_of_attempts=out_of_attempts)
    params = {"status": status, "task_type": task_type, "q": q, "out_of_attempts": "true" if out_of_attempts else ""}
    shown_total = f"more than {COUNT_CAP:,}" if q and total > COUNT_CAP else f"{total:,}"
    return render(request, "tasks.html", visit, items=items, total=total, shown_total=shown_total, offset=offset,
                  status=status, task_type=task_type, q=q, max_query=MAX_QUERY_CHARS, sort=sort,
                  out_of_attempts=out_of_attempts,
                  sort_label=_SORTABLE[column], descending=descending,
                  headers=_sort_headers(params, column, descending),
                  pages=page_links("/tasks", {**params, "sort": sort}, offset, total),
                  create_key=f"console:{secrets.token_urlsafe(16)}")


@router.post("/tasks")
async def create_task(request: Request) -> Response:
    """Create a task through the API's rules; 303 to its page. The form carries an idempotency key made when it
    was rendered, so submitting it again (a reload, a double click, a retry after a lost answer) shows the task
    the first submit made instead of making another."""
    visit, fields = await posted_form(request)
    names = ("direction", "task_type", "command", "priority", "idempotency_key")
    body = validated(TaskCreateItem, {k: v for k, v in fields.items() if k in names and v != ""})
    if isinstance(body, list):
        return error_page(request, 422, "The task was not created", body, visit)
    try:
        refuse_disallowed_commands([body], settings_of(request))
    except RequestValidationError as exc:
        return error_page(request, 422, "The task was not created", [e["msg"] for e in exc.errors()], visit)
    actor = f"console:{visit.session.identity}"
    try:
        task, created = await run_in_threadpool(lambda: store_of(request).create_or_replay(actor=actor,
                                                                                          **body.model_dump()))
    except Conflict as exc:
        return error_page(request, 409, "The task was not created", str(exc), visit)
    if created:
        request.app.state.metrics.tasks_created.labels(task["task_type"]).inc()
    return RedirectResponse(f"/tasks/{task['id']}", status_code=303)


def _task_log(settings: Settings, task: dict[str, Any]) -> tuple[str, str]:
    """The end of the task's log file here, else the output tail stored on the task; and which one it is."""
    try:
        return read_log_end(task_log_path(settings, task["id"]), LOG_LINES_SHOWN).text, "log file"
    except FileNotFoundError:
        return task.get("output") or "", "stored output tail"


@router.get("/tasks/{task_id}")
def task_page(request: Request, task_id: TaskId) -> HTMLResponse:
    visit = visit_of(request)
    try:
        task = store_of(request).get(task_id)
    except NotFound as exc:
        return error_page(request, 404, "Task not found", str(exc), visit)
    text, source = _task_log(settings_of(request), task)
    trail, more = store_of(request).audit_page(task_id=task_id, limit=AUDIT_SHOWN)
    printed = task["last_output_at"] if task["status"] == TaskStatus.RUNNING else None
    silent = None if printed is None else max((utcnow() - printed).total_seconds(), 0.0)
    return render(request, "task.html", visit, task=task, log_text=text, log_source=source,
                  live=task["status"] in (TaskStatus.PENDING, TaskStatus.RUNNING), log_lines=LOG_LINES_SHOWN,
                  trail=trail, more_trail=more is not None, silent=silent,
                  stalled=silent is not None and silent > settings_of(request).coherence_stall_warn_seconds)


@router.post("/tasks/{task_id}/decide")
async def decide(request: Request, task_id: TaskId) -> Response:
    """Answer a needs_decision task as ``console:<identity>`` (TaskPatch rules, TaskStore.decide)."""
    visit, fields = await posted_form(request)
    who = f"console:{visit.session.identity}"
    body = validated(TaskPatch, {"decision": fields.get("decision", "").strip() or None, "decided_by": who})
    if isinstance(body, list):
        return error_page(request, 422, "The answer was not recorded", body, visit)
    back = local_path(fields.get("back"), f"/tasks/{task_id}")
    decision = body.decision
    assert decision is not None  # TaskPatch._one_change: without a status, the decision is given
    return await act_on_task(request, visit, lambda: store_of(request).decide(task_id, decision, who), back, task_id)


@router.post("/tasks/{task_id}/retry")
async def retry(request: Request, task_id: TaskId) -> Response:
    visit, _ = await posted_form(request)
    who = f"console:{visit.session.identity}"
    return await act_on_task(request, visit, lambda: store_of(request).retry(task_id, actor=who),
                             f"/tasks/{task_id}", task_id)


@router.post("/tasks/{task_id}/cancel")
async def cancel(request: Request, task_id: TaskId) -> Response:
    """Cancel a task as ``console:<identity>`` with the reason typed in the confirmation (CancelRequest rules)."""
    visit, fields = await posted_form(request)
    who = f"console:{visit.session.identity}"
    body = validated(CancelRequest, {"reason": fields.get("reason", "").strip(), "by": who})
    if isinstance(body, list):
        return error_page(request, 422, "The task was not cancelled", body, visit)
    return await act_on_task(request, visit, lambda: store_of(request).cancel(task_id, who, body.reason),
                             f"/tasks/{task_id}", task_id)


@router.get("/decisions")
def decisions_page(request: Request, offset: int = 0) -> HTMLResponse:
    visit = visit_of(request)
    offset = min(max(offset, 0), 2**31 - 1)
    items, total = store_of(request).list(status=TaskStatus.NEEDS_DECISION, order="oldest", limit=PAGE_SIZE,
                                        offset=offset)
    return render(request, "decisions.html", visit, items=items, total=total, offset=offset,
                  pages=page_links("/decisions", {}, offset, total),
                  oldest=store_of(request).oldest_decision_seconds(utcnow()))

