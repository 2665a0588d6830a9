"""Steering: pause the whole pipeline or one task type, and resume it; cancel a task. A pause is stored (a restart
keeps it) and read by every claim in its own transaction; running tasks finish (drain). A resume wakes waiting
claims. A cancelled running task is stopped by its runner, told by its next lease renewal."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from coherence_network.api.deps import acting_as, store_of
from coherence_network.api.models import COMMON_ERRORS, TaskId, responses
from coherence_network.contract import PAUSE_ALL, PauseChange, PauseList, Task
from coherence_network.request_bodies import CancelRequest, PauseRequest, ResumeRequest
from coherence_network.store import TaskStore

router = APIRouter(prefix="/api/agent", tags=["steering"], responses=COMMON_ERRORS)
log = logging.getLogger("coherence.api")


def pause_scope(store: TaskStore, scope: str, by: str, reason: str) -> dict[str, Any]:
    """Pause ``scope`` as ``by`` and log it: the one way every channel pauses (this API, the console, the Telegram
    webhook), so each does the same. A PauseChange's fields."""
    stored, created = store.pause(scope, by, reason)
    if created:
        log.warning("paused %s by %s: %s", scope, by, reason)
    return {"changed": created, "pause": stored}


def resume_scope(store: TaskStore, scope: str, by: str) -> dict[str, Any]:
    """Resume ``scope`` as ``by`` and log it (every channel, as pause_scope). A PauseChange's fields."""
    ended = store.resume(scope, by)
    if ended is not None:
        log.warning("resumed %s by %s (paused since %s by %s: %s)", scope, by, ended["since"].isoformat(),
                    ended["by"], ended["reason"])
    return {"changed": ended is not None, "pause": ended}


@router.post("/pause", response_model=PauseChange)
async def pause(body: PauseRequest, request: Request) -> dict[str, Any]:
    """Pause the whole pipeline (no ``type``) or one task type: claims hand out nothing of it, running tasks
    finish. Pausing what is paused keeps the first pause (``changed`` false): safe to repeat."""
    scope = body.type.value if body.type else PAUSE_ALL
    return await run_in_threadpool(pause_scope, store_of(request), scope, body.by, body.reason)


@router.post("/resume", response_model=PauseChange)
async def resume(body: ResumeRequest, request: Request) -> dict[str, Any]:
    """Resume what a pause held (no ``type``: the whole pipeline's pause; a type's own pause stays until it is
    resumed too). Waiting claims look again at once. Resuming what is not paused changes nothing."""
    scope = body.type.value if body.type else PAUSE_ALL
    return await run_in_threadpool(resume_scope, store_of(request), scope, body.by)


@router.get("/pauses", response_model=PauseList)
def pauses(request: Request) -> dict[str, Any]:
    """The scopes paused now (``all`` or a task type), oldest first: since when, by whom and why."""
    return {"pauses": store_of(request).pauses()}


@router.post("/tasks/{task_id:id}/cancel", response_model=Task, responses=responses(404, 409))
async def cancel_task(task_id: TaskId, body: CancelRequest, request: Request) -> dict[str, Any]:
    """Cancel a task: pending or needs_decision settle as cancelled at once; a running one gets
    ``cancel_requested_at`` and its runner stops its process group (SIGTERM, then SIGKILL after the grace) and
    finishes it as cancelled. 409 naming the status when it is completed or failed; a repeat returns the task."""
    by = acting_as(request, body.by)
    task = await run_in_threadpool(store_of(request).cancel, task_id, by, body.reason)
    log.warning("task %s: cancel by %s (%s): %s", task_id, by, task["status"], body.reason)
    return task
