"""Tasks: create (one or a batch), list, count, read, decide or retry, and read a task's log."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse

from coherence_network.api.answers import answer
from coherence_network.api.deps import acting_as, actor_of, in_store, store_of
from coherence_network.api.models import (
    COMMON_ERRORS,
    SEARCH_QUERY,
    SORT_QUERY,
    Offset,
    SearchText,
    TaskId,
    TaskSort,
    refuse_disallowed_commands,
    responses,
)
from coherence_network.contract import Task, TaskCount, TaskList, TaskPage, TaskStatus, TaskType, parse_sort
from coherence_network.logfiles import task_log_path
from coherence_network.request_bodies import TaskBatch, TaskCreate, TaskPatch, Text, UtcTime
from coherence_network.store.search import COUNT_CAP

router = APIRouter(prefix="/api/agent", tags=["agent"], responses=COMMON_ERRORS)
REPLAYED_HEADER = "Idempotent-Replayed"
LOG_READ_CAP_BYTES = 4 * 2**20  # a log answer holds at most the file's last 4 MiB, whatever its size
_LOG_BLOCK_BYTES = 64 * 1024


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
    out_of_attempts: bool = Query(False, description="Only failed tasks whose attempts are spent (attempts >= "
                                  "max_attempts): nothing retries them but an operator"),
) -> dict[str, Any]:
    column, descending = parse_sort(sort) if sort else ("id", None)
    if finished_after is not None and column != "id":
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "sort"), "input": sort,
                                       "msg": "finished_after orders by finish time; it takes no sort"}])
    items, total = store_of(request).list(status=status, task_type=task_type, order=order, limit=limit, offset=offset,
                                        finished_after=finished_after, search=q, sort=column, descending=descending,
                                        out_of_attempts=out_of_attempts)
    return {"items": items, "total": total, "limit": limit, "offset": offset,
            "total_exact": q is None or total <= COUNT_CAP}


@router.post("/tasks", status_code=201, response_model=Task,
             responses={200: {"model": Task, "description": "A create with this Idempotency-Key was made before"},
                        **responses(409)})
async def create_task(
    body: TaskCreate,
    request: Request,
    idempotency_key: Annotated[Text | None, Header(
        min_length=1, max_length=200,
        description="Makes the create safe to retry: the same key returns the task the first create made (200)",
    )] = None,
) -> Response:
    refuse_disallowed_commands([body], request.app.state.settings)
    task, created = await in_store(request,
        lambda: store_of(request).create_or_replay(**body.model_dump(), idempotency_key=idempotency_key,
                                                   actor=actor_of(request))
    )
    if not created:
        return answer(Task, task, 200, {REPLAYED_HEADER: "true"})
    request.app.state.metrics.tasks_created.labels(task["task_type"]).inc()
    return answer(Task, task, 201)


@router.post("/tasks/batch", status_code=201, response_model=TaskList,
             responses={200: {"model": TaskList, "description": "Every item was a replay of an earlier create"},
                        **responses(409)})
async def create_tasks(body: TaskBatch, request: Request, response: Response) -> dict[str, Any]:
    """Create many tasks in one transaction, answered in the order given; each item may carry its own
    ``idempotency_key``. A key reused for another task is 409 and nothing of the batch is written."""
    refuse_disallowed_commands(body.tasks, request.app.state.settings, batch=True)
    results = await run_in_threadpool(
        lambda: store_of(request).create_many([item.model_dump() for item in body.tasks], actor=actor_of(request))
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


@router.get("/tasks/{task_id:id}", response_model=Task, responses=responses(404))
def get_task(task_id: TaskId, request: Request) -> dict[str, Any]:
    return store_of(request).get(task_id)


@router.patch("/tasks/{task_id:id}", response_model=Task, responses=responses(404, 409))
async def patch_task(task_id: TaskId, body: TaskPatch, request: Request) -> dict[str, Any]:
    """Answer a needs_decision task (``{"decision": "yes"}``) or retry a failed one (``{"status": "pending"}``)."""
    store = store_of(request)
    if body.decision is not None:
        who = acting_as(request, body.decided_by)
        task = await run_in_threadpool(store.decide, task_id, body.decision, who)
    else:
        task = await run_in_threadpool(lambda: store.retry(task_id, actor=actor_of(request)))
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
