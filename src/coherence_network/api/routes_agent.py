"""Agent tasks and the runner registry: create, read, claim (long-poll), heartbeat, finish, decide, retry."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor

from coherence_network.api.deps import store_of
from coherence_network.api.models import (
    COMMON_ERRORS,
    SEARCH_QUERY,
    SORT_QUERY,
    AgentReport,
    ClaimRequest,
    Offset,
    RunnerHeartbeat,
    SearchText,
    TaskBatch,
    TaskCreate,
    TaskFinish,
    TaskHeartbeat,
    TaskId,
    TaskPatch,
    TaskSort,
    Text,
    UtcTime,
    refuse_disallowed_commands,
    responses,
)
from coherence_network.clock import utcnow
from coherence_network.contract import (
    FinishAndClaim,
    Runner,
    RunnerList,
    Task,
    TaskCount,
    TaskList,
    TaskPage,
    TaskStatus,
    TaskType,
    parse_sort,
)
from coherence_network.logfiles import task_log_path
from coherence_network.store.search import COUNT_CAP

router = APIRouter(prefix="/api/agent", tags=["agent"], responses=COMMON_ERRORS)
log = logging.getLogger("coherence.api")
REPLAYED_HEADER = "Idempotent-Replayed"
REAPER_MAX_BACKOFF_SECONDS = 30.0  # the longest pause between reaper passes while the store is unavailable
REAPER_LATE_SECONDS = 1.0  # a pass this much later than planned (or an interval, if longer) means nobody answered
LOG_READ_CAP_BYTES = 4 * 2**20  # a log answer holds at most the file's last 4 MiB, whatever its size
_LOG_BLOCK_BYTES = 64 * 1024


class _IdSegment(Convertor[str]):
    """A path segment that reads as an integer (sign included): only such a segment reaches a ``{task_id}`` route,
    so /tasks/count, /tasks/claim... are never taken for an id (a method they lack is 405 naming what they allow,
    not a 422 about the id), while every number reaches the id's bounds (422 when out of range). It stays text:
    the id's validation turns it into an integer, refusing thousands of digits as a 422, not a 500."""

    regex = "-?[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


register_url_convertor("id", _IdSegment())



@router.get("/tasks", response_model=TaskPage)
def list_tasks(
    request: Request,
    status: TaskStatus | None = None,
    task_type: TaskType | None = None,
    order: Literal["newest", "oldest"] = "newest",
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
    finished_after: UtcTime | None = Query(
        None, description="Only tasks finished after this time (ISO 8601 with a zone), ordered by finish time: "
        "a reader that keeps the last finish time it saw pages through what finished since"),
    q: SearchText | None = SEARCH_QUERY,
    sort: TaskSort | None = SORT_QUERY,
) -> dict[str, Any]:
    column, descending = parse_sort(sort) if sort else ("id", None)
    if finished_after is not None and column != "id":
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "sort"), "input": sort,
                                       "msg": "finished_after orders by finish time; it takes no sort"}])
    items, total = store_of(request).list(status=status, task_type=task_type, order=order, limit=limit, offset=offset,
                                        finished_after=finished_after, search=q, sort=column, descending=descending)
    return {"items": items, "total": total, "limit": limit, "offset": offset,
            "total_exact": q is None or total <= COUNT_CAP}


@router.post("/tasks", status_code=201, response_model=Task,
             responses={200: {"model": Task, "description": "A create with this Idempotency-Key was made before"},
                        **responses(409)})
async def create_task(
    body: TaskCreate,
    request: Request,
    response: Response,
    idempotency_key: Annotated[Text | None, Header(
        min_length=1, max_length=200,
        description="Makes the create safe to retry: the same key returns the task the first create made (200)",
    )] = None,
) -> dict[str, Any]:
    refuse_disallowed_commands([body], request.app.state.settings)
    task, created = await run_in_threadpool(
        lambda: store_of(request).create_or_replay(**body.model_dump(), idempotency_key=idempotency_key)
    )
    if not created:
        response.status_code = 200
        response.headers[REPLAYED_HEADER] = "true"
        return task
    request.app.state.metrics.tasks_created.labels(task["task_type"]).inc()
    return task


@router.post("/tasks/batch", status_code=201, response_model=TaskList,
             responses={200: {"model": TaskList, "description": "Every item was a replay of an earlier create"},
                        **responses(409)})
async def create_tasks(body: TaskBatch, request: Request, response: Response) -> dict[str, Any]:
    """Create many tasks in one transaction, answered in the order given; each item may carry its own
    ``idempotency_key``. A key reused for another task is 409 and nothing of the batch is written."""
    refuse_disallowed_commands(body.tasks, request.app.state.settings, batch=True)
    results = await run_in_threadpool(
        lambda: store_of(request).create_many([item.model_dump() for item in body.tasks])
    )
    made = [task for task, created in results if created]
    for task in made:
        request.app.state.metrics.tasks_created.labels(task["task_type"]).inc()
    if not made:
        response.status_code = 200
        response.headers[REPLAYED_HEADER] = "true"
    return {"tasks": [task for task, _ in results]}


@router.get("/tasks/count", response_model=TaskCount)
def count_tasks(request: Request) -> dict[str, Any]:
    return store_of(request).count()


@router.post("/tasks/claim", responses={200: {"model": Task | TaskList},
                                         204: {"description": "No task was claimable within wait_seconds"}})
async def claim_task(body: ClaimRequest, request: Request) -> Response:
    """Claim the most urgent pending task; with ``wait_seconds`` wait for one, so dispatch is immediate.

    With ``request_id``, a retried claim returns the task the first one got (same claim token). With
    ``max_tasks`` above 1 the answer is ``{"tasks": [...]}``, as from /tasks/claims."""
    claimed = await _claim_waiting(body, request)
    headers = _closing(request)
    if body.max_tasks > 1:
        return _answer(TaskList, {"tasks": claimed}, headers)
    return _answer(Task, claimed[0]) if claimed else Response(status_code=204, headers=headers)


def _answer(model: type[BaseModel], value: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """An answer whose shape depends on the request, serialized by its contract model as routes with a
    ``response_model`` are (times end in Z, as everywhere else; jsonable_encoder would write +00:00)."""
    return JSONResponse(model.model_validate(value).model_dump(mode="json"), headers=headers)


@router.post("/tasks/claims", response_model=TaskList)
async def claim_tasks(body: ClaimRequest, request: Request, response: Response) -> dict[str, Any]:
    """Claim up to ``max_tasks`` tasks in one call, most urgent first; an empty list when none came within
    ``wait_seconds``."""
    claimed = await _claim_waiting(body, request)
    response.headers.update(_closing(request))
    return {"tasks": claimed}


def _closing(request: Request) -> dict[str, str]:
    """While the server shuts down a claim's answer closes its connection: the runner's next claim then reaches
    the API that replaces this one, not this one again."""
    return {"Connection": "close"} if request.app.state.work.closed else {}


async def _claim_waiting(body: ClaimRequest, request: Request, *, looked: bool = False) -> list[dict[str, Any]]:
    """The long poll behind every claim: claim at once (unless the caller just ``looked``), else wait up to
    ``wait_seconds``, looking at the store again only when woken (a task was made claimable here or, on
    PostgreSQL, on any replica) or every COHERENCE_CLAIM_RECHECK_SECONDS (the safety net), so an idle long poll
    costs next to nothing. Once the server shuts down it answers at once and claims nothing (see api/signals.py)."""
    state = request.app.state
    deadline = time.monotonic() + body.wait_seconds
    recheck = state.settings.coherence_claim_recheck_seconds
    gone: asyncio.Future[None] | None = None
    hops: int | None = None  # set while this claim holds a wake-up (see api/signals.py)
    replay = not looked  # only the first look can be a retry of a claim that was answered
    try:
        while True:
            if state.work.closed:
                return []
            if not looked:
                claimed = await run_in_threadpool(
                    state.store.claim_many, body.runner_id, body.max_tasks, types=body.types,
                    lease_seconds=body.lease_seconds, request_id=body.request_id, replay=replay,
                )
                replay = False
                if claimed:
                    if hops is not None:
                        state.work.notify()  # there may be more: the next waiter looks too
                    _count_claims(state, claimed)
                    return claimed
                if hops and body.types:
                    state.work.notify(hops - 1)  # nothing of these types: maybe something for another waiter
            looked = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            gone = gone or asyncio.ensure_future(_client_gone(request))
            hops = await state.work.wait(min(remaining, recheck), gone)
            if gone.done():  # nobody would receive a task claimed now: the wake-up goes to another waiter
                if hops is not None:
                    state.work.notify(hops)
                return []
    finally:
        if gone is not None:
            gone.cancel()


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects: its body is read, so the next message the server gives is that."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _count_claims(state: Any, claimed: list[dict[str, Any]]) -> None:
    state.metrics.tasks_claimed.inc(len(claimed))
    for task in claimed:
        state.metrics.queue_wait.observe(max((task["started_at"] - task["created_at"]).total_seconds(), 0.0))


@router.get("/tasks/{task_id:id}", response_model=Task, responses=responses(404))
def get_task(task_id: TaskId, request: Request) -> dict[str, Any]:
    return store_of(request).get(task_id)


@router.patch("/tasks/{task_id:id}", response_model=Task, responses=responses(404, 409))
async def patch_task(task_id: TaskId, body: TaskPatch, request: Request) -> dict[str, Any]:
    """Answer a needs_decision task (``{"decision": "yes"}``) or retry a failed one (``{"status": "pending"}``)."""
    store = store_of(request)
    if body.decision is not None:
        who = body.decided_by or "api"
        task = await run_in_threadpool(store.decide, task_id, body.decision, who)
    else:
        task = await run_in_threadpool(store.retry, task_id)
    return task


@router.get("/tasks/{task_id:id}/log", response_class=PlainTextResponse, responses=responses(404))
def task_log(task_id: TaskId, request: Request, tail: int = Query(0, ge=0, le=100000)) -> PlainTextResponse:
    """The task's log file (last ``tail`` lines when given); the stored output tail if no log is here.

    At most the file's last LOG_READ_CAP_BYTES are read and returned, whatever the file's size; headers say the
    file's size, the cap and whether the answer was cut (a first line says so too)."""
    task = store_of(request).get(task_id)
    path = task_log_path(request.app.state.settings, task_id)
    try:
        end = read_log_end(path, tail)
    except FileNotFoundError:
        text = task.get("output") or ""
        return PlainTextResponse(_last_lines(text, tail) if tail else text,
                                 headers={"X-Log-Source": "stored-output-tail"})
    text = end.text
    if end.skipped:
        text = (f"[the first {end.skipped} of {end.size} bytes are not shown: the API returns at most the last "
                f"{LOG_READ_CAP_BYTES} bytes of a log; the whole file is {path} on this host]\n{text}")
    headers = {"X-Log-Source": "file", "X-Log-Size-Bytes": str(end.size), "X-Log-Cap-Bytes": str(LOG_READ_CAP_BYTES),
               "X-Log-Truncated": "true" if end.skipped else "false"}
    return PlainTextResponse(text, headers=headers)


@dataclass(frozen=True)
class LogEnd:
    """The end of a log file: its text, the file's size and the bytes before it not shown because of the cap."""

    text: str
    size: int
    skipped: int


def read_log_end(path: Path, tail: int, cap: int = LOG_READ_CAP_BYTES) -> LogEnd:
    """The last ``tail`` lines of a file (all of it with 0), reading at most its last ``cap`` bytes.

    ``tail`` walks back block by block until it has seen enough line ends, so a 300 MB log costs a few blocks.
    A line cut by the cap is dropped unless it is the only one."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        floor = start = max(size - cap, 0)
        if tail:
            start, line_ends = size, 0
            while start > floor and line_ends <= tail:
                step = min(_LOG_BLOCK_BYTES, start - floor)
                start -= step
                handle.seek(start)
                line_ends += handle.read(step).count(b"\n")
        handle.seek(max(start - 1, 0))
        data = handle.read(size - max(start - 1, 0))
    if start > 0:  # data begins one byte early: a line end there means the first line is whole
        data = data[data.index(b"\n") + 1:] if b"\n" in data else data[1:]
    text = data.decode("utf-8", errors="replace")
    if tail:
        cut = start == floor > 0 and len(text.splitlines()) < tail
        text = _last_lines(text, tail)
    else:
        cut = start > 0
    return LogEnd(text=text, size=size, skipped=size - len(data) if cut else 0)


def _last_lines(text: str, count: int) -> str:
    return "\n".join(text.splitlines()[-count:]) + "\n"


@router.post("/tasks/{task_id:id}/heartbeat", response_model=Task, responses=responses(404, 409))
async def heartbeat_task(task_id: TaskId, body: TaskHeartbeat, request: Request) -> dict[str, Any]:
    """Extend the lease (and report progress); 409 when the claim token is no longer the current claim."""
    _log_replaced(task_id, body)
    return await run_in_threadpool(
        lambda: store_of(request).heartbeat(
            task_id,
            body.claim_token,
            progress_pct=body.progress_pct,
            current_step=body.current_step,
            lease_seconds=body.lease_seconds,
        )
    )


@router.post("/tasks/{task_id:id}/finish", response_model=None, responses={
    200: {"model": Task | FinishAndClaim, "description": "The finished task; {finished, next} with claim_next"},
    **responses(404, 409)})
async def finish_task(task_id: TaskId, body: TaskFinish, request: Request) -> Any:
    """End a claim: completed, failed, needs_decision (with its question) or pending (release).

    With ``claim_next`` the runner's next task is claimed in the same transaction (a refused finish claims
    nothing), waiting up to its ``wait_seconds`` for one; the answer is then ``{"finished": ..., "next": ...}``."""
    _log_replaced(task_id, body)
    store = store_of(request)
    ending: dict[str, Any] = {"status": body.status, "output": body.output, "exit_code": body.exit_code,
                              "decision_prompt": body.decision_prompt}
    following = body.claim_next
    if following is None:
        task = await run_in_threadpool(lambda: store.finish(task_id, body.claim_token, **ending))
        _count_finish(request, task)
        return task
    task, following_task = await run_in_threadpool(
        lambda: store.finish_and_claim(
            task_id, body.claim_token, **ending, runner_id=following.runner_id, types=following.types,
            lease_seconds=following.lease_seconds, request_id=following.request_id,
        )
    )
    _count_finish(request, task)
    if following_task is not None:
        _count_claims(request.app.state, [following_task])
    elif following.wait_seconds > 0:
        following_task = next(iter(await _claim_waiting(following, request, looked=True)), None)
    return _answer(FinishAndClaim, {"finished": task, "next": following_task})


def _count_finish(request: Request, task: dict[str, Any]) -> None:
    metrics = request.app.state.metrics
    metrics.tasks_finished.labels(task["status"]).inc()
    if task["started_at"] is not None and task["status"] != TaskStatus.PENDING:
        metrics.task_run.labels(task["task_type"]).observe((utcnow() - task["started_at"]).total_seconds())


def _log_replaced(task_id: int, report: AgentReport) -> None:
    """Agent output is kept even when the store cannot hold some of its characters; the log says what changed."""
    if report.replaced:
        fields = ", ".join(f"{name}: {count}" for name, count in report.replaced.items())
        log.warning("task %s: characters the store cannot hold (NUL, lone surrogates) replaced with U+FFFD (%s)",
                    task_id, fields)


@router.post("/runners/heartbeat", response_model=Runner)
async def runner_heartbeat(body: RunnerHeartbeat, request: Request) -> dict[str, Any]:
    """Register a runner (or refresh it): id, host, pid, version, last_seen."""
    return await run_in_threadpool(
        lambda: store_of(request).runner_heartbeat(
            body.runner_id, host=body.host, pid=body.pid, version=body.version, info=body.info
        )
    )


@router.get("/runners", response_model=RunnerList)
def list_runners(request: Request) -> dict[str, Any]:
    return {"items": store_of(request).runners()}


class LeaseReaper:
    """The background pass over expired leases (claims no longer wait on it), and when it must hold back.

    An expired lease means a dead runner only if this API could have heard the runner renew it. Whenever it could
    not, the reaper requeues nothing for one lease (``grace``), counted from the moment it can hear again, so
    runners renew first and their results are accepted:

    - at start (a lease may have expired while no API ran);
    - when the store answers again after failing a pass of the reaper or any request (heartbeats got 503 meanwhile;
      runners retry them about once a second);
    - after a pass that came late by the loop's own clock (the process was stopped, SIGSTOP, or starved): the store
      may have been up all along, yet nobody here answered the runners;
    - when the pass itself waited for the store's write lock (SQLite: another process held it): the renewals
      waited behind the same lock, so the pass requeues nothing and holds back instead.

    A store outage is logged once when it starts and once when it ends, and passes back off while it lasts (a
    traceback every pass would bury the log); /api/ready says what is wrong meanwhile."""

    def __init__(self, app: Any, interval: float, grace: float) -> None:
        self.app, self.interval, self.grace = app, interval, grace
        self.hold_until = time.monotonic() + grace
        self.store_suspect = False  # a request found the store unavailable: probe it before trusting leases

    def store_failed(self) -> None:
        """A request got 503 from the store: renewals may have failed too (called by api/errors.py)."""
        self.store_suspect = True

    def _hold(self, why: str, *, quiet_if_holding: bool = False) -> None:
        """Requeue nothing for one lease from now; say so (``quiet_if_holding``: unless already holding, so that
        a store refusing a request now and then, e.g. SQLite busy, does not write a line every pass)."""
        now = time.monotonic()
        if not (quiet_if_holding and now < self.hold_until):
            self.app.state.log.warning("reaper: %s; no expired lease is requeued for %g s, so runners renew first",
                                       why, self.grace)
        self.hold_until = now + self.grace

    async def run(self) -> None:
        store, log = self.app.state.store, self.app.state.log
        down_since: float | None = None
        delay = self.interval
        while True:
            asleep, asleep_wall = time.monotonic(), time.time()
            await asyncio.sleep(delay)
            # The wall clock too: CLOCK_MONOTONIC stands still while the host is suspended, the leases' clock does not.
            late = max(time.monotonic() - asleep, time.time() - asleep_wall) - delay
            if late > max(self.interval, REAPER_LATE_SECONDS):
                self._hold(f"this pass came {late:.1f} s late (was the API stopped, starved or its host suspended?)")
            try:
                if down_since is not None or self.store_suspect:
                    self.store_suspect = False  # before the probe: a failure reported during it is not lost
                    await run_in_threadpool(store.ping)
                    if down_since is not None:
                        self._hold(f"store available again after {time.monotonic() - down_since:.0f} s")
                    else:
                        self._hold("a request found the store unavailable", quiet_if_holding=True)
                    down_since, delay = None, self.interval
                if time.monotonic() < self.hold_until:
                    continue
                result = await run_in_threadpool(lambda: store.reap(max_lock_wait=max(self.interval,
                                                                                       REAPER_LATE_SECONDS)))
            except Exception as exc:  # a store outage must not kill the loop
                if down_since is None:
                    down_since = time.monotonic()
                    cause = (str(exc).strip().splitlines() or [""])[0][:300]
                    log.error("store unavailable to the lease reaper: %s: %s (retrying with backoff; "
                              "GET /api/ready tells more)", type(exc).__name__, cause)
                delay = min(delay * 2, REAPER_MAX_BACKOFF_SECONDS)
                continue
            if result.waited is not None:
                self._hold(f"this pass waited {result.waited:.1f} s for the store's write lock, as renewals did")
            if result.reclaimed or result.failed:
                self.app.state.metrics.tasks_reclaimed.inc(result.reclaimed)
                self.app.state.metrics.tasks_lease_failed.inc(result.failed)
                log.warning("reaper: %d expired leases back to pending, %d failed", result.reclaimed, result.failed)


async def reaper_loop(app: Any, interval: float, grace: float) -> None:
    """Run the lease reaper of ``app`` (see LeaseReaper); requests that find the store unavailable tell it."""
    app.state.reaper = LeaseReaper(app, interval, grace)
    await app.state.reaper.run()
