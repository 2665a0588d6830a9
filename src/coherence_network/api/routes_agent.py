"""Agent tasks and the runner registry: create, read, claim (long-poll), heartbeat, finish, decide, retry."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, PlainTextResponse

from coherence_network.api.models import (
    ClaimRequest,
    RunnerHeartbeat,
    TaskCreate,
    TaskFinish,
    TaskHeartbeat,
    TaskPatch,
)
from coherence_network.contract import Runner, RunnerList, Task, TaskCount, TaskPage, TaskStatus, TaskType
from coherence_network.logfiles import task_log_path
from coherence_network.store.tasks import TaskStore, utcnow

router = APIRouter(prefix="/api/agent", tags=["agent"])
_IDLE_RECHECK_SECONDS = 0.5  # a long-poll also rechecks the store, for tasks created through another replica
REPLAYED_HEADER = "Idempotent-Replayed"


def _store(request: Request) -> TaskStore:
    return request.app.state.store


@router.get("/tasks", response_model=TaskPage)
def list_tasks(
    request: Request,
    status: TaskStatus | None = None,
    task_type: TaskType | None = None,
    order: Literal["newest", "oldest"] = "newest",
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    items, total = _store(request).list(status=status, task_type=task_type, order=order, limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.post("/tasks", status_code=201, response_model=Task,
             responses={200: {"model": Task, "description": "A create with this Idempotency-Key was made before"}})
async def create_task(
    body: TaskCreate,
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(
        None, min_length=1, max_length=200,
        description="Makes the create safe to retry: the same key returns the task the first create made (200)",
    ),
) -> dict[str, Any]:
    task, created = await run_in_threadpool(
        lambda: _store(request).create_or_replay(**body.model_dump(), idempotency_key=idempotency_key)
    )
    if not created:
        response.status_code = 200
        response.headers[REPLAYED_HEADER] = "true"
        return task
    request.app.state.metrics.tasks_created.labels(task["task_type"]).inc()
    request.app.state.work.notify()
    return task


@router.get("/tasks/count", response_model=TaskCount)
def count_tasks(request: Request) -> dict[str, Any]:
    return _store(request).count()


@router.post("/tasks/claim", responses={200: {"model": Task},
                                         204: {"description": "No task was claimable within wait_seconds"}})
async def claim_task(body: ClaimRequest, request: Request) -> Response:
    """Claim the most urgent pending task; with ``wait_seconds`` wait for one, so dispatch is immediate.

    With ``request_id``, a retried claim returns the task the first one got (same claim token)."""
    state = request.app.state
    deadline = time.monotonic() + body.wait_seconds
    first = True
    while True:
        task = await run_in_threadpool(
            lambda: state.store.claim(
                body.runner_id, types=body.types, lease_seconds=body.lease_seconds, request_id=body.request_id,
                replay=first,
            )
        )
        first = False
        if task is not None:
            state.metrics.tasks_claimed.inc()
            state.metrics.queue_wait.observe(max((task["started_at"] - task["created_at"]).total_seconds(), 0.0))
            return JSONResponse(jsonable_encoder(task))
        remaining = deadline - time.monotonic()
        if remaining <= 0 or await request.is_disconnected():
            return Response(status_code=204)
        await state.work.wait(min(remaining, _IDLE_RECHECK_SECONDS))


@router.get("/tasks/{task_id}", response_model=Task)
def get_task(task_id: int, request: Request) -> dict[str, Any]:
    return _store(request).get(task_id)


@router.patch("/tasks/{task_id}", response_model=Task)
async def patch_task(task_id: int, body: TaskPatch, request: Request) -> dict[str, Any]:
    """Answer a needs_decision task (``{"decision": "yes"}``) or retry a failed one (``{"status": "pending"}``)."""
    store = _store(request)
    if body.decision is not None:
        who = body.decided_by or "api"
        task = await run_in_threadpool(store.decide, task_id, body.decision, who)
    else:
        task = await run_in_threadpool(store.retry, task_id)
    request.app.state.work.notify()
    return task


@router.get("/tasks/{task_id}/log", response_class=PlainTextResponse)
def task_log(task_id: int, request: Request, tail: int = Query(0, ge=0, le=100000)) -> PlainTextResponse:
    """The task's full log file (last ``tail`` lines when given); the stored output tail if no log is here."""
    task = _store(request).get(task_id)
    path = task_log_path(request.app.state.settings, task_id)
    if path.exists():
        text, source = path.read_text(encoding="utf-8", errors="replace"), "file"
    else:
        text, source = task.get("output") or "", "stored-output-tail"
    if tail:
        text = "\n".join(text.splitlines()[-tail:]) + "\n"
    return PlainTextResponse(text, headers={"X-Log-Source": source})


@router.post("/tasks/{task_id}/heartbeat", response_model=Task)
async def heartbeat_task(task_id: int, body: TaskHeartbeat, request: Request) -> dict[str, Any]:
    """Extend the lease (and report progress); 409 when the claim token is no longer the current claim."""
    return await run_in_threadpool(
        lambda: _store(request).heartbeat(
            task_id,
            body.claim_token,
            progress_pct=body.progress_pct,
            current_step=body.current_step,
            lease_seconds=body.lease_seconds,
        )
    )


@router.post("/tasks/{task_id}/finish", response_model=Task)
async def finish_task(task_id: int, body: TaskFinish, request: Request) -> dict[str, Any]:
    """End a claim: completed, failed, needs_decision (with its question) or pending (release)."""
    task = await run_in_threadpool(
        lambda: _store(request).finish(
            task_id,
            body.claim_token,
            status=body.status,
            output=body.output,
            exit_code=body.exit_code,
            decision_prompt=body.decision_prompt,
        )
    )
    metrics = request.app.state.metrics
    metrics.tasks_finished.labels(task["status"]).inc()
    if task["started_at"] is not None and task["status"] != TaskStatus.PENDING:
        metrics.task_run.labels(task["task_type"]).observe((utcnow() - task["started_at"]).total_seconds())
    if task["status"] == TaskStatus.PENDING:
        request.app.state.work.notify()
    return task


@router.post("/runners/heartbeat", response_model=Runner)
async def runner_heartbeat(body: RunnerHeartbeat, request: Request) -> dict[str, Any]:
    """Register a runner (or refresh it): id, host, pid, version, last_seen."""
    return await run_in_threadpool(
        lambda: _store(request).runner_heartbeat(
            body.runner_id, host=body.host, pid=body.pid, version=body.version, info=body.info
        )
    )


@router.get("/runners", response_model=RunnerList)
def list_runners(request: Request) -> dict[str, Any]:
    return {"items": _store(request).runners()}


async def reaper_loop(app: Any, interval: float, grace: float) -> None:
    """Background pass over expired leases; claims no longer wait on it.

    The first pass waits ``grace`` seconds (one lease): a lease that expired while this API was down says nothing
    about its runner, which could not renew; runners get that long to renew once the API answers again."""
    await asyncio.sleep(grace)
    while True:
        try:
            result = await run_in_threadpool(app.state.store.reap)
        except Exception:  # a store outage must not kill the loop; /api/ready reports it
            app.state.log.exception("lease reaper pass failed")
        else:
            if result.reclaimed or result.failed:
                app.state.metrics.tasks_reclaimed.inc(result.reclaimed)
                app.state.metrics.tasks_lease_failed.inc(result.failed)
                app.state.log.warning(
                    "reaper: %d expired leases back to pending, %d failed", result.reclaimed, result.failed
                )
                app.state.work.notify()
        await asyncio.sleep(interval)
