"""The console's pages and forms. Reads are paged store queries; every action is the store call the JSON API makes,
validated by the API's own request models, so an illegal move shows the API's message (409) on the page.

Forms post ``application/x-www-form-urlencoded`` and answer 303 to the page that shows the result, so they work
without JavaScript. The body is read only after the session and its CSRF token are known, never before.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from coherence_network import grading, health, restart
from coherence_network.api.deps import store_of
from coherence_network.api.effectiveness import backlog_progress, goal_proximity
from coherence_network.api.errors import bounded_error
from coherence_network.api.models import TaskId, refuse_disallowed_commands
from coherence_network.api.routes_projects import _key as stored_project_name
from coherence_network.api.routes_tasks import read_log_end
from coherence_network.console import charts
from coherence_network.console.session import (
    COOKIE,
    Session,
    Sessions,
    clean_identity,
    key_from_token,
    local_path,
)
from coherence_network.contract import TaskStatus, TaskType, parse_sort
from coherence_network.errors import CoherenceError
from coherence_network.logfiles import RUN_FILES, shared_secret, task_log_path
from coherence_network.monitor import with_command
from coherence_network.request_bodies import TaskCreateItem, TaskPatch, storable_text
from coherence_network.settings import Settings
from coherence_network.store import Conflict, NotFound
from coherence_network.store.errors import StoreError
from coherence_network.store.search import COUNT_CAP, MAX_QUERY_CHARS

router = APIRouter(include_in_schema=False)
log = logging.getLogger("coherence.api")
PAGE_SIZE = 50
LOG_LINES_SHOWN = 400
ECOSYSTEMS = ("npm", "pypi")
MAX_FORM_BYTES = 64 * 1024
_TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                         autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)


def _utc(value: datetime) -> datetime:
    """A stored time in UTC (the store's times are UTC; a naive one is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# A time is rendered in UTC, labelled; the console's JavaScript rewrites the text to the viewer's zone and keeps
# the UTC text as the element's title (shown on hover).
_TEMPLATES.filters["utc_iso"] = lambda value: _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")
_TEMPLATES.filters["utc_text"] = lambda value: _utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")
# Every page: no script, style, image or connection from elsewhere, nothing inline (the console's JavaScript and CSS
# are files under /console-static), forms post only here, and no other site may frame a page (clickjacking).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# What a restart does to each component: the confirmation page says it before anything is written.
RESTART_CONSEQUENCES = {
    "api": "The API and this console stop answering for a second or two while it restarts (pages show a banner "
           "until it is back); runners, the monitor and the project manager wait and carry on.",
    "agent_runner": "The runner stops: the tasks it is running are stopped and released, and run again from the "
                    "start once it (or another runner) claims them.",
    "project_manager": "The project manager stops and starts again; it keeps its place in the backlog.",
    "monitor": "The monitor stops and starts again; its checks pause for a moment and its open issues stay open.",
    "all": "Every component restarts, the API first: all of the above at once.",
}
_RESTART_NOTICES = {
    "requested": "Restart requested: the supervisor acts on it within seconds (see coherence status).",
    "no-supervisor": "No supervisor runs for this COHERENCE_HOME, so nothing would act on a restart request; "
                     "nothing was written. Start the pipeline with coherence supervise.",
}


@dataclass(frozen=True)
class ChartRange:
    """A span of the throughput chart: its buckets, how it is named and how its bars are labelled."""

    name: str  # what the chart's title says
    per: str  # the bucket, in words
    bucket: timedelta
    count: int
    label_every: int
    label: Callable[[str], str]


# Bucket sizes keep every span at 24 to 30 bars, so a bar stays wide enough to see and to point at.
CHART_RANGES = {
    "24h": ChartRange("last 24 h", "hour", timedelta(hours=1), 24, 3, lambda start: start[11:13]),
    "7d": ChartRange("last 7 days", "6 hours", timedelta(hours=6), 28, 4, lambda start: start[5:10]),
    "30d": ChartRange("last 30 days", "day", timedelta(days=1), 30, 5, lambda start: start[5:10]),
}

_UNSTORABLE_MESSAGE = "Names hold no NUL characters or lone surrogates: no project can have one."


class FormRefused(CoherenceError):
    """A posted form that is not acted on; its error page is the answer."""

    def __init__(self, page: HTMLResponse) -> None:
        super().__init__(page.status_code)
        self.page = page


class SignInNeeded(CoherenceError):
    """An unsigned visitor asked for a page while a token is set: answered with 303 to the sign-in page."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


@dataclass(frozen=True)
class Visit:
    """Who is looking, and the cookie to set when this visit opened the session (open console, first page)."""

    session: Session
    new_cookie: str | None = None


def _settings(request: Request) -> Settings:
    return request.app.state.settings



def _sessions(request: Request) -> Sessions:
    return request.app.state.console_sessions


def token_required(request: Request) -> bool:
    return bool(_settings(request).coherence_api_token)


def _visit(request: Request) -> Visit:
    """The visitor's session; without a token a visitor gets one on sight, with a token it takes a sign-in."""
    sessions = _sessions(request)
    session = sessions.verify(request.cookies.get(COOKIE))
    if session is not None:
        return Visit(session)
    if token_required(request):
        raise SignInNeeded(_back_after_sign_in(request))
    cookie = sessions.issue("")
    return Visit(sessions.verify(cookie), cookie)  # type: ignore[arg-type]


def _back_after_sign_in(request: Request) -> str:
    """The page to return to: this one for a GET; for a form (posted after the session expired) the page the form
    was on, since its target answers only POST."""
    if request.method in ("GET", "HEAD"):
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc != request.headers.get("host"):
        return "/"
    return local_path(referer.path + (f"?{referer.query}" if referer.query else ""))


def set_session_cookie(request: Request, response: Response, cookie: str) -> None:
    response.set_cookie(COOKIE, cookie, max_age=int(_sessions(request).lifetime), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


def render(request: Request, template: str, visit: Visit | None, code: int = 200, **values: Any) -> HTMLResponse:
    """A page with the layout's common values (who, CSRF token, whether sign-out makes sense, whether agent-phase
    tasks can run here)."""
    page = _TEMPLATES.get_template(template).render(
        request=request, path=request.url.path, identity=visit.session.identity if visit else None,
        csrf=_sessions(request).csrf_token(visit.session) if visit else "",
        signed=token_required(request), Status=TaskStatus, statuses=list(TaskStatus), types=list(TaskType),
        agent_command_set=bool(_settings(request).coherence_agent_command), **values)
    response = HTMLResponse(page, status_code=code, headers=PAGE_HEADERS)
    if visit is not None and visit.new_cookie:
        set_session_cookie(request, response, visit.new_cookie)
    return response


def error_page(request: Request, status: int, title: str, message: str | list[str],
               visit: Visit | None = None, back: tuple[str, str] | None = None) -> HTMLResponse:
    """The console's error page; ``back`` is (link, words) for the page to return to, besides the overview."""
    messages = [message] if isinstance(message, str) else message
    return render(request, "error.html", visit, code=status, title=title, messages=messages, back=back)


async def _form(request: Request) -> tuple[Visit, dict[str, str]]:
    """The session and the posted fields, once the CSRF token matched; else FormRefused (a 403 page, mostly)."""
    visit = _visit(request)
    if visit.new_cookie:  # no session came with the post: it cannot carry this session's token
        raise FormRefused(error_page(request, 403, "Form refused",
                                     "This form has no valid session; reload the page and retry."))
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise FormRefused(error_page(request, 415, "Form refused",
                                     "Forms are posted as application/x-www-form-urlencoded.", visit))
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise FormRefused(error_page(request, 413, "Form refused", f"A form is at most {MAX_FORM_BYTES} bytes.",
                                     visit))
    fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).items()}
    if not _sessions(request).csrf_ok(visit.session, fields.pop("csrf", None)):
        log.warning("console: form %s refused: missing or wrong CSRF token", request.url.path)
        raise FormRefused(error_page(request, 403, "Form refused", "The form's CSRF token is missing or wrong; "
                                     "reload the page and submit it again.", visit))
    return visit, fields


Model = TypeVar("Model", bound=BaseModel)


def _validated(model: type[Model], values: dict[str, Any]) -> Model | list[str]:
    """The API's request model over the form's values, or its messages (the same rules as the JSON API)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg']}" for e in map(bounded_error, exc.errors())]


async def _act(request: Request, visit: Visit, action: Callable[[], Any], done: str, task_id: int) -> Response:
    """Run a store action on a task; 303 to ``done`` on success, the API's 404/409/400 message as a page otherwise,
    with a link back to the task."""
    back = (f"/tasks/{task_id}", f"Back to task #{task_id}")
    try:
        await run_in_threadpool(action)
    except NotFound as exc:
        return error_page(request, 404, "Not found", str(exc), visit)
    except Conflict as exc:
        return error_page(request, 409, "Refused: the task is not in a state for this", str(exc), visit, back)
    except ValueError as exc:
        return error_page(request, 400, "Refused", str(exc), visit, back)
    return RedirectResponse(done, status_code=303)


# --- sign-in ----------------------------------------------------------------------------------------------------
@router.get("/signin")
def signin_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "signin.html", None, next=local_path(next), error=None)


@router.post("/signin")
async def signin(request: Request) -> Response:
    """Token (when one is set) and an optional name in, a session cookie out; a wrong token is a logged 401.

    The sign-in form has no CSRF token (there is no session yet), so a post another site's page makes is refused by
    its Origin: it could otherwise swap the operator's session for one under a name of its choosing."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):  # scheme: a TLS proxy
        log.warning("console sign-in refused: posted from another origin (%s)", origin[:100])
        return error_page(request, 403, "Sign-in refused", "The sign-in form was posted from another site.")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return error_page(request, 413, "Sign-in refused", "The form is too large.")
    fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace")).items()}
    target = local_path(fields.get("next"))
    token = _settings(request).coherence_api_token
    if token and not _sessions(request).token_ok(fields.get("token", "").encode("utf-8", "replace")):
        client = request.client.host if request.client else "?"
        log.warning("console sign-in refused from %s: wrong token", client)
        return render(request, "signin.html", None, code=401, next=target,
                      error="That is not the API token (COHERENCE_API_TOKEN). Nothing was signed in.")
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response, _sessions(request).issue(clean_identity(fields.get("identity", ""))))
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    await _form(request)  # a sign-out is a form too: another site cannot sign the operator out
    response = RedirectResponse("/signin" if token_required(request) else "/", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- overview -----------------------------------------------------------------------------------------------------
@router.get("/")
def overview(request: Request, restart_notice: str = "",
             chart_range: str = Query("24h", alias="range")) -> HTMLResponse:
    visit = _visit(request)
    span = CHART_RANGES.get(chart_range)
    if span is None:
        return error_page(request, 400, "Unknown range", f"range must be one of {', '.join(CHART_RANGES)}; "
                          f"{chart_range[:40]!r} is not", visit)
    settings, store = _settings(request), store_of(request)
    snapshot = request.app.state.metrics.health_snapshot()
    now = snapshot.now
    finished = store.throughput(now, span.bucket, span.count)  # the days before today's counts reused
    daily, week = store.week_success(now)
    flags = health.evaluate(snapshot, settings)  # the rules, live, and the monitors' facts of their hosts: once each
    attention = [f for f in flags if not health.from_monitor(f)]
    monitor_issues = [with_command(i) for i in snapshot.host_issues]
    fatal_issues = snapshot.fatal
    # /api/agent/effectiveness's formula over the same inputs, without its per-day throughput (rows, not counts)
    backlog = backlog_progress(store, settings)
    total = sum(snapshot.by_status.values())
    goal = goal_proximity(backlog, {"total": total, "by_status": snapshot.by_status}, week["success_rate"],
                          grading.health_term(flags, len(fatal_issues)))
    pending_by_type = {t: p["count"] for t, p in sorted(snapshot.pending.items())}
    return render(
        request, "overview.html", visit,
        now=now, counts=snapshot.by_status, total=total, goal=goal, backlog=backlog,
        manager=snapshot.components.get(health.MANAGER),
        runners=snapshot.runners, components=snapshot.components, running=snapshot.running,
        pending=snapshot.pending, needs_decision=snapshot.needs_decision, recent=snapshot.recent[:10],
        attention=attention,
        monitor_issues=monitor_issues, fatal_issues=fatal_issues,
        throughput_svg=charts.stacked_bars(finished, "start", (TaskStatus.COMPLETED, TaskStatus.FAILED),
                                           f"Tasks finished per {span.per}, {span.name}", label=span.label,
                                           every=span.label_every),
        chart_range=chart_range, chart_ranges=CHART_RANGES, span=span,
        queue_svg=charts.horizontal_bars({TaskStatus.RUNNING: snapshot.by_status.get(TaskStatus.RUNNING, 0),
                                          **{f"pending {t}": n for t, n in pending_by_type.items()},
                                          "needs decision": snapshot.by_status.get(TaskStatus.NEEDS_DECISION, 0)},
                                         "Queue depth now"),
        success_svg=charts.rate_bars(daily, "Success rate per day, last 7 days"),
        restart_targets=restart.TARGETS, restart_notice=_RESTART_NOTICES.get(restart_notice),
    )


@router.post("/restart")
async def request_component_restart(request: Request) -> Response:
    """The request `coherence restart` writes, for the supervisor of this host's COHERENCE_HOME, once confirmed: a
    post without ``confirm=yes`` answers a page naming the component and what its restart does, whose form (with
    the CSRF token) posts again with ``confirm=yes``. Works without JavaScript."""
    visit, fields = await _form(request)
    component = fields.get("component", "")
    if component not in restart.TARGETS:
        return error_page(request, 400, "Restart refused",
                          f"Choose a component to restart: one of {', '.join(restart.TARGETS)}.", visit,
                          ("/#restart", "Back to the restart form"))
    given = fields.get("reason", "").strip()[:500]
    if fields.get("confirm") != "yes":
        return render(request, "restart.html", visit, component=component, reason=given,
                      consequence=RESTART_CONSEQUENCES[component])
    reason = f"console:{visit.session.identity}: {given or 'restart from the console'}"
    try:
        result = await run_in_threadpool(restart.request_restart, _settings(request), component, reason)
    except ValueError as exc:
        return error_page(request, 400, "Restart refused", str(exc), visit)
    notice = "requested" if result.supervisor_pid is not None else "no-supervisor"
    return RedirectResponse(f"/?{urlencode({'restart_notice': notice})}#restart", status_code=303)


# --- tasks --------------------------------------------------------------------------------------------------------
def _page_links(path: str, params: dict[str, Any], offset: int, total: int) -> dict[str, str | None]:
    """Previous and next page URLs keeping the filter."""
    def link(at: int) -> str:
        return f"{path}?{urlencode({**{k: v for k, v in params.items() if v}, 'offset': at})}"
    return {"prev": link(max(offset - PAGE_SIZE, 0)) if offset > 0 else None,
            "next": link(offset + PAGE_SIZE) if offset + PAGE_SIZE < total else None}


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
               offset: int = 0) -> HTMLResponse:
    visit = _visit(request)
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
                                        descending=descending, limit=PAGE_SIZE, offset=offset)
    params = {"status": status, "task_type": task_type, "q": q}
    shown_total = f"more than {COUNT_CAP:,}" if q and total > COUNT_CAP else f"{total:,}"
    return render(request, "tasks.html", visit, items=items, total=total, shown_total=shown_total, offset=offset,
                  status=status, task_type=task_type, q=q, max_query=MAX_QUERY_CHARS, sort=sort,
                  sort_label=_SORTABLE[column], descending=descending,
                  headers=_sort_headers(params, column, descending),
                  pages=_page_links("/tasks", {**params, "sort": sort}, offset, total),
                  create_key=f"console:{secrets.token_urlsafe(16)}")


@router.post("/tasks")
async def create_task(request: Request) -> Response:
    """Create a task through the API's rules; 303 to its page. The form carries an idempotency key made when it
    was rendered, so submitting it again (a reload, a double click, a retry after a lost answer) shows the task
    the first submit made instead of making another."""
    visit, fields = await _form(request)
    names = ("direction", "task_type", "command", "priority", "idempotency_key")
    body = _validated(TaskCreateItem, {k: v for k, v in fields.items() if k in names and v != ""})
    if isinstance(body, list):
        return error_page(request, 422, "The task was not created", body, visit)
    try:
        refuse_disallowed_commands([body], _settings(request))
    except RequestValidationError as exc:
        return error_page(request, 422, "The task was not created", [e["msg"] for e in exc.errors()], visit)
    try:
        task, created = await run_in_threadpool(lambda: store_of(request).create_or_replay(**body.model_dump()))
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
    visit = _visit(request)
    try:
        task = store_of(request).get(task_id)
    except NotFound as exc:
        return error_page(request, 404, "Task not found", str(exc), visit)
    text, source = _task_log(_settings(request), task)
    return render(request, "task.html", visit, task=task, log_text=text, log_source=source,
                  live=task["status"] in (TaskStatus.PENDING, TaskStatus.RUNNING), log_lines=LOG_LINES_SHOWN)


@router.post("/tasks/{task_id}/decide")
async def decide(request: Request, task_id: TaskId) -> Response:
    """Answer a needs_decision task as ``console:<identity>`` (TaskPatch rules, TaskStore.decide)."""
    visit, fields = await _form(request)
    who = f"console:{visit.session.identity}"
    body = _validated(TaskPatch, {"decision": fields.get("decision", "").strip() or None, "decided_by": who})
    if isinstance(body, list):
        return error_page(request, 422, "The answer was not recorded", body, visit)
    back = local_path(fields.get("back"), f"/tasks/{task_id}")
    decision = body.decision
    assert decision is not None  # TaskPatch._one_change: without a status, the decision is given
    return await _act(request, visit, lambda: store_of(request).decide(task_id, decision, who), back, task_id)


@router.post("/tasks/{task_id}/retry")
async def retry(request: Request, task_id: TaskId) -> Response:
    visit, _ = await _form(request)
    return await _act(request, visit, lambda: store_of(request).retry(task_id), f"/tasks/{task_id}", task_id)


@router.get("/decisions")
def decisions_page(request: Request, offset: int = 0) -> HTMLResponse:
    visit = _visit(request)
    offset = min(max(offset, 0), 2**31 - 1)
    items, total = store_of(request).list(status=TaskStatus.NEEDS_DECISION, order="oldest", limit=PAGE_SIZE,
                                        offset=offset)
    return render(request, "decisions.html", visit, items=items, total=total, offset=offset,
                  pages=_page_links("/decisions", {}, offset, total))


# --- graph --------------------------------------------------------------------------------------------------------
@router.get("/graph")
def graph_page(request: Request, q: str = "", ecosystem: str = "", offset: int = 0) -> HTMLResponse:
    visit = _visit(request)
    if ecosystem and ecosystem not in ECOSYSTEMS:
        return error_page(request, 400, "Unknown ecosystem", f"ecosystem must be one of {', '.join(ECOSYSTEMS)}",
                          visit)
    if storable_text(q)[1]:
        return error_page(request, 400, "Bad search", _UNSTORABLE_MESSAGE, visit)
    graph = request.app.state.graph
    q, offset = q.strip()[:214], min(max(offset, 0), 2**31 - 1)
    items, total = graph.search(q=q, ecosystem=ecosystem or None, limit=PAGE_SIZE, offset=offset)
    return render(request, "graph.html", visit, q=q, ecosystem=ecosystem, ecosystems=ECOSYSTEMS, items=items,
                  total=total, offset=offset, stats=graph.stats(ECOSYSTEMS),
                  pages=_page_links("/graph", {"q": q, "ecosystem": ecosystem}, offset, total))


@router.get("/graph/{ecosystem}/{name:path}")
def project_page(request: Request, ecosystem: str, name: str, offset: int = 0) -> HTMLResponse:
    visit = _visit(request)
    if storable_text(name)[1]:
        return error_page(request, 400, "Bad project name", _UNSTORABLE_MESSAGE, visit)
    graph = request.app.state.graph
    key = stored_project_name(ecosystem, name) if ecosystem in ECOSYSTEMS else name
    project = graph.project(ecosystem, key) if ecosystem in ECOSYSTEMS else None
    if project is None:
        return error_page(request, 404, "Project not indexed", f"{ecosystem} project {name!r} is not indexed", visit)
    offset = min(max(offset, 0), 2**31 - 1)
    dependents, total = graph.dependents(ecosystem, key, limit=PAGE_SIZE, offset=offset)
    return render(request, "project.html", visit, project=project, dependents=dependents, total=total,
                  offset=offset, pages=_page_links(f"/graph/{ecosystem}/{key}", {}, offset, total))


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the console at "/" with its static files, and answer an unsigned visitor with the sign-in page."""
    token = settings.coherence_api_token
    # Without a token the key is this home's generated one, so every uvicorn worker accepts the others' cookies.
    key = key_from_token(token or shared_secret(RUN_FILES["console_session_key"].path(settings)))
    app.state.console_sessions = Sessions(key, settings.coherence_console_session_hours * 3600, token or None)
    app.mount("/console-static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static")
    app.include_router(router)

    @app.exception_handler(FormRefused)
    async def _refused(_: Request, exc: FormRefused) -> HTMLResponse:
        return exc.page

    @app.exception_handler(SignInNeeded)
    async def _sign_in(_: Request, exc: SignInNeeded) -> RedirectResponse:
        return RedirectResponse(f"/signin?{urlencode({'next': exc.target})}", status_code=303)

    _html_errors_for_browsers(app)


_ERROR_TITLES = {404: "Page not found", 405: "Method not allowed", 503: "Store unavailable"}


def _wants_html(request: Request) -> bool:
    """A browser asking for a page: HTML accepted, and a path outside the JSON API (which always answers JSON)."""
    path = request.url.path
    return "text/html" in request.headers.get("accept", "") and not (path == "/api" or path.startswith("/api/"))


def _html_errors_for_browsers(app: FastAPI) -> None:
    """An unknown URL, a method a path does not answer and a store that cannot be reached answer a browser with the
    console's error page (same status and headers) instead of the JSON a client gets: the JSON API's handlers
    (api/errors.py) decide the status, this only changes the face."""
    for kind in (HTTPException, StoreError):
        json_handler = app.exception_handlers[kind]

        async def handler(request: Request, exc: Exception,
                          json_handler: Callable[..., Any] = json_handler) -> Response:
            answer = await json_handler(request, exc)
            if not _wants_html(request) or answer.status_code < 400:
                return answer
            session = _sessions(request).verify(request.cookies.get(COOKIE))
            status = answer.status_code
            page = render(request, "error.html", Visit(session) if session else None, code=status,
                          title=_ERROR_TITLES.get(status, "Error"), messages=[_error_words(request, answer)],
                          back=None, refresh=5 if status == 503 and request.method == "GET" else None)
            if "allow" in answer.headers:
                page.headers["Allow"] = answer.headers["allow"]
            return page

        app.add_exception_handler(kind, handler)


def _error_words(request: Request, answer: Response) -> str:
    """What the error page says: the path for a 404 and 405; the JSON API's reason otherwise."""
    if answer.status_code == 404:
        return f"The console has no page at {request.url.path[:200]}."
    if answer.status_code == 405:
        return f"{request.url.path[:200]} does not answer {request.method}; it answers {answer.headers.get('allow')}."
    detail = json.loads(bytes(answer.body)).get("detail")
    reason = detail if isinstance(detail, str) else "the request was refused"
    if answer.status_code == 503:
        return f"The API answers but cannot reach its store ({reason}). Reload once the store is back."
    return reason
