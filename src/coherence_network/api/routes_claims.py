"""Claims: a runner claims tasks (a long poll), renews its lease and finishes, perhaps claiming its next task in
the same call."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from coherence_network.agents import Usage
from coherence_network.api.answers import answer
from coherence_network.api.deps import in_store, store_of
from coherence_network.api.models import COMMON_ERRORS, TaskId, responses
from coherence_network.clock import utcnow
from coherence_network.contract import FinishAndClaim, Task, TaskList, TaskStatus, TaskType
from coherence_network.endpoints import CLAIM_HELD_HEADER
from coherence_network.request_bodies import AgentReport, ClaimRequest, TaskFinish, TaskHeartbeat
from coherence_network.store import TaskStore
from coherence_network.store.run_endings import AgentRun

router = APIRouter(prefix="/api/agent", tags=["agent"], responses=COMMON_ERRORS)
log = logging.getLogger("coherence.api")
DUE_MARGIN_SECONDS = 0.01


@router.post("/tasks/claim", responses={200: {"model": Task | TaskList},
                                         204: {"description": "No task was claimable within wait_seconds"}})
async def claim_task(body: ClaimRequest, request: Request) -> Response:
    """Claim the most urgent pending task; with ``wait_seconds`` wait for one, so dispatch is immediate.

    With ``request_id``, a retried claim returns the task the first one got (same claim token). With
    ``max_tasks`` above 1 the answer is ``{"tasks": [...]}``, as from /tasks/claims."""
    claimed, held = await _claim_waiting(body, request)
    headers = {**_closing(request), CLAIM_HELD_HEADER: held}
    if body.max_tasks > 1:
        return answer(TaskList, {"tasks": claimed}, headers=headers)
    return answer(Task, claimed[0], headers=headers) if claimed else Response(status_code=204, headers=headers)


@router.post("/tasks/claims", response_model=TaskList)
async def claim_tasks(body: ClaimRequest, request: Request, response: Response) -> dict[str, Any]:
    """Claim up to ``max_tasks`` tasks in one call, most urgent first; an empty list when none came within
    ``wait_seconds``."""
    claimed, held = await _claim_waiting(body, request)
    response.headers.update({**_closing(request), CLAIM_HELD_HEADER: held})
    return {"tasks": claimed}


def _closing(request: Request) -> dict[str, str]:
    """While the server shuts down a claim's answer closes its connection: the runner's next claim then reaches
    the API that replaces this one, not this one again."""
    return {"Connection": "close"} if request.app.state.work.closed else {}


async def _claim_waiting(
    body: ClaimRequest, request: Request, *, looked: bool = False,
) -> tuple[list[dict[str, Any]], str]:
    """The long poll behind every claim: claim at once (unless the caller just ``looked``), else wait up to
    ``wait_seconds``, looking at the store again only when woken (a task was made claimable here or, on
    PostgreSQL, on any replica), when the first automatic retry in its backoff becomes due (no write wakes anyone
    then: one index seek before each wait says when), or every COHERENCE_CLAIM_RECHECK_SECONDS (the safety net), so
    an idle long poll costs next to nothing. Once the server shuts down it answers at once and claims nothing (see
    api/signals.py).

    Also how long it waited before the look that claimed (CLAIM_HELD_HEADER's value): "0" when it claimed without
    waiting, so a retried claim's replay, granted before this request, never counts as held."""
    state = request.app.state
    received = time.monotonic()
    deadline = received + body.wait_seconds
    waited = False
    recheck = state.settings.coherence_claim_recheck_seconds
    gone: asyncio.Future[None] | None = None
    hops: int | None = None  # set while this claim holds a wake-up (see api/signals.py)
    replay = not looked  # only the first look can be a retry of a claim that was answered
    try:
        while True:
            if state.work.closed:
                return [], "0"
            if not looked:
                held = f"{time.monotonic() - received:.3f}" if waited else "0"
                claimed = await in_store(request, partial(
                    state.store.claim_many, body.runner_id, body.max_tasks, types=body.types,
                    lease_seconds=body.lease_seconds, request_id=body.request_id, replay=replay,
                ))
                replay = False
                if claimed:
                    if hops is not None:
                        state.work.notify()  # there may be more: the next waiter looks too
                    _count_claims(state, claimed)
                    return claimed, held
                if hops and body.types:
                    state.work.notify(hops - 1)  # nothing of these types: maybe something for another waiter
            looked = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], "0"
            gone = gone or asyncio.ensure_future(_client_gone(request))
            hops = await state.work.wait(min(remaining, recheck, await _until_due(state.store, body.types)), gone)
            waited = True
            if gone.done():  # nobody would receive a task claimed now: the wake-up goes to another waiter
                if hops is not None:
                    state.work.notify(hops)
                return [], "0"
    finally:
        if gone is not None:
            gone.cancel()


async def _until_due(store: TaskStore, types: list[TaskType] | None) -> float:
    """Seconds until the first task of ``types`` waiting out a retry's backoff is due (inf: none waits), and a
    hair more, so the look then finds it due."""
    now = utcnow()
    due = await run_in_threadpool(store.next_due, now, types)
    return math.inf if due is None else (due - now).total_seconds() + DUE_MARGIN_SECONDS


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects: its body is read, so the next message the server gives is that."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _count_claims(state: Any, claimed: list[dict[str, Any]]) -> None:
    state.metrics.tasks_claimed.inc(len(claimed))
    for task in claimed:
        waited = max((task["started_at"] - task["created_at"]).total_seconds(), 0.0)
        state.metrics.queue_wait.labels(task["task_type"]).observe(waited)


@router.post("/tasks/{task_id:id}/heartbeat", response_model=Task, responses=responses(404, 409))
async def heartbeat_task(task_id: TaskId, body: TaskHeartbeat, request: Request) -> Response:
    """Extend the lease (and report progress); 409 when the claim token is no longer the current claim."""
    _log_replaced(task_id, body)
    return answer(Task, await in_store(request, lambda: store_of(request).heartbeat(
        task_id,
        body.claim_token,
        progress_pct=body.progress_pct,
        current_step=body.current_step,
        lease_seconds=body.lease_seconds,
        silent_seconds=body.silent_seconds,
        cost_usd=body.cost_usd,
    )))


@router.post("/tasks/{task_id:id}/finish", response_model=None, responses={
    200: {"model": Task | FinishAndClaim, "description": "The finished task; {finished, next} with claim_next"},
    **responses(404, 409)})
async def finish_task(task_id: TaskId, body: TaskFinish, request: Request) -> Response:
    """End a claim: completed, failed, needs_decision (with its question) or pending (release).

    With ``claim_next`` the runner's next task is claimed in the same call (a refused finish claims
    nothing), waiting up to its ``wait_seconds`` for one; the answer is then ``{"finished": ..., "next": ...}``."""
    _log_replaced(task_id, body)
    store = store_of(request)
    ending: dict[str, Any] = {"status": body.status, "output": body.output, "exit_code": body.exit_code,
                              "decision_prompt": body.decision_prompt, "error_category": body.error_category,
                              "error_summary": body.error_summary, "evidence": body.evidence,
                              "usage": AgentRun(body.agent, body.model,
                                                Usage(body.tokens_in, body.tokens_out, body.cost_usd))}
    following = body.claim_next
    if following is None:
        task = await in_store(request, lambda: store.finish(task_id, body.claim_token, **ending))
        _count_finish(request, task, body.status)
        return answer(Task, task)
    task, following_task = await in_store(request, lambda: store.finish_and_claim(
        task_id, body.claim_token, **ending, runner_id=following.runner_id, types=following.types,
        lease_seconds=following.lease_seconds, request_id=following.request_id,
    ))
    _count_finish(request, task, body.status)
    if following_task is not None:
        _count_claims(request.app.state, [following_task])
    elif following.wait_seconds > 0:
        claimed, held = await _claim_waiting(following, request, looked=True)
        return answer(FinishAndClaim, {"finished": task, "next": next(iter(claimed), None)},
                      headers={CLAIM_HELD_HEADER: held})
    return answer(FinishAndClaim, {"finished": task, "next": following_task})


def _count_finish(request: Request, task: dict[str, Any], ended: TaskStatus) -> None:
    """Counted as the run ended (a failure an automatic retry sends back to pending counts as failed)."""
    metrics = request.app.state.metrics
    metrics.tasks_finished.labels(ended).inc()
    if task["started_at"] is not None and ended != TaskStatus.PENDING:
        metrics.task_run.labels(task["task_type"]).observe((utcnow() - task["started_at"]).total_seconds())


def _log_replaced(task_id: int, report: AgentReport) -> None:
    """Agent output is kept even when the store cannot hold some of its characters; the log says what changed."""
    if report.replaced:
        fields = ", ".join(f"{name}: {count}" for name, count in report.replaced.items())
        log.warning("task %s: characters the store cannot hold (NUL, lone surrogates) replaced with U+FFFD (%s)",
                    task_id, fields)
