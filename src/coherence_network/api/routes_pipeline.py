"""Pipeline status, task metrics and component heartbeats: what operators, `coherence status` and the monitor read.

The project manager runs on some host and keeps its state in a local file; it also posts that state's summary as a
component heartbeat, so any API replica can show it.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from coherence_network.api.metrics import RUNNER_SEEN_SECONDS
from coherence_network.api.models import COMMON_ERRORS, JsonObject, Pid, Strict, Text
from coherence_network.contract import PipelineStatus, TaskStatus
from coherence_network.logfiles import task_log_path
from coherence_network.settings import Settings
from coherence_network.store.stats import Limits, pipeline_snapshot, task_metrics
from coherence_network.store.tasks import TaskStore, utcnow

router = APIRouter(prefix="/api/agent", tags=["pipeline"], responses=COMMON_ERRORS)
MANAGER_COMPONENT = "project_manager"
LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 16 * 1024


class ComponentHeartbeat(Strict):
    component: Text = Field(min_length=1, max_length=100, description="Component name, e.g. project_manager")
    host: Text = Field(min_length=1, max_length=255)
    pid: Pid
    version: Text = Field("unknown", min_length=1, max_length=100)
    info: JsonObject | None = Field(None, description="A small summary of the component's state")


def _store(request: Request) -> TaskStore:
    return request.app.state.store


@router.post("/components/heartbeat")
async def component_heartbeat(body: ComponentHeartbeat, request: Request) -> dict[str, Any]:
    """A component (the project manager, the monitor...) says it is alive, with a summary of its state."""
    return await run_in_threadpool(
        lambda: _store(request).component_heartbeat(
            body.component, host=body.host, pid=body.pid, version=body.version, info=body.info
        )
    )


@router.get("/metrics")
def metrics(request: Request) -> dict[str, Any]:
    """Success rate (24 h, 7 d), run time and queue wait p50/p95 by task type, throughput per hour."""
    return task_metrics(_store(request).engine)


@router.get("/pipeline-status", response_model=PipelineStatus)
def pipeline_status(request: Request) -> dict[str, Any]:
    """Running, pending, waiting and recent tasks, the project manager, runners and attention flags."""
    store = _store(request)
    settings: Settings = request.app.state.settings
    now = utcnow()
    limits = Limits()
    snapshot = pipeline_snapshot(store.engine, now, limits, settings.pipeline_failure_streak)
    runners = [_seen(r, now) for r in store.runners()]
    components = {c["name"]: _seen(c, now) for c in store.components()}
    manager = components.get(MANAGER_COMPONENT)
    running = snapshot["running"]
    oldest = running[0] if running else None
    return {
        "generated_at": now,
        "counts": store.count(),
        "running": running,
        "oldest_running_log": _log_tail(task_log_path(settings, oldest["id"])) if oldest else None,
        "pending": snapshot["pending"],
        "needs_decision": snapshot["needs_decision"],
        "recent": snapshot["recent"][: limits.recent],
        "success_24h": snapshot["success_24h"],
        "project_manager": manager,
        "runners": runners,
        "components": components,
        "attention": attention(snapshot, runners, manager, settings),
    }


def _seen(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    age = (now - row["last_seen"]).total_seconds()
    return {**row, "last_seen_seconds": round(age, 3), "seen": age <= RUNNER_SEEN_SECONDS}


def _log_tail(path: Path) -> list[str] | None:
    """The last lines of a task log on this host (None when the log lives elsewhere); reads only the file's end."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(handle.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return text.splitlines()[-LOG_TAIL_LINES:]


def attention(
    snapshot: dict[str, Any], runners: list[dict[str, Any]], manager: dict[str, Any] | None, settings: Settings
) -> list[dict[str, Any]]:
    """Flags an operator should look at, each {code, message, task_ids}; thresholds come from Settings."""
    flags: list[dict[str, Any]] = []

    def flag(code: str, message: str, task_ids: list[int] | None = None) -> None:
        flags.append({"code": code, "message": message, "task_ids": task_ids or []})

    stuck_seconds = settings.pipeline_stuck_minutes * 60
    stuck = [t["id"] for t in snapshot["running"] if (t["elapsed_seconds"] or 0) > stuck_seconds]
    if stuck:
        flag("stuck", f"{len(stuck)} task(s) running longer than {settings.pipeline_stuck_minutes:g} min", stuck)
    streak = snapshot["recent"][: settings.pipeline_failure_streak]
    if len(streak) == settings.pipeline_failure_streak and all(t["status"] == TaskStatus.FAILED for t in streak):
        flag("repeated_failures", f"the last {len(streak)} finished tasks all failed", [t["id"] for t in streak])
    empty = [t["id"] for t in snapshot["recent"] if t["status"] == TaskStatus.COMPLETED and not t["output_chars"]]
    if empty:
        flag("empty_output", f"{len(empty)} recently completed task(s) produced no output", empty)
    rate = snapshot["success_24h"]
    finished = rate["completed"] + rate["failed"]
    if finished >= settings.pipeline_success_rate_min_tasks and rate["success_rate"] < settings.pipeline_min_success_rate:
        flag("low_success_rate",
             f"24 h success rate {rate['success_rate']:.0%} over {finished} tasks "
             f"(threshold {settings.pipeline_min_success_rate:.0%})")
    if snapshot["pending"] and not any(r["seen"] for r in runners):
        flag("no_runner", f"tasks are pending but no runner was seen in the last {RUNNER_SEEN_SECONDS:.0f} s")
    if manager is not None and not manager["seen"]:
        flag("manager_stale", f"the project manager was last seen {manager['last_seen_seconds']:.0f} s ago")
    waiting = [t["id"] for t in snapshot["needs_decision"]]
    if waiting:
        flag("needs_decision", f"{len(waiting)} task(s) wait for a decision", waiting)
    return flags
