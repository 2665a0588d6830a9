"""Pipeline status, task metrics and component heartbeats: what operators, `coherence status` and the monitor read.

The project manager runs on some host and keeps its state in a local file; it also posts that state's summary as a
component heartbeat, so any API replica can show it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from coherence_network import health
from coherence_network.api.deps import store_of
from coherence_network.api.models import COMMON_ERRORS
from coherence_network.contract import PipelineStatus
from coherence_network.logfiles import task_log_path
from coherence_network.request_bodies import ComponentHeartbeat
from coherence_network.settings import Settings
from coherence_network.store.stats import Limits

router = APIRouter(prefix="/api/agent", tags=["pipeline"], responses=COMMON_ERRORS)
LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 16 * 1024


@router.post("/components/heartbeat")
async def component_heartbeat(body: ComponentHeartbeat, request: Request) -> dict[str, Any]:
    """A component (the project manager, the monitor...) says it is alive, with a summary of its state."""
    return await run_in_threadpool(
        lambda: store_of(request).component_heartbeat(
            body.component, host=body.host, pid=body.pid, version=body.version, info=body.info
        )
    )


@router.get("/metrics")
def metrics(request: Request) -> dict[str, Any]:
    """Success rate (24 h, 7 d), run time and queue wait p50/p95 by task type, throughput per hour: from the hourly
    rollup, so windows are whole UTC hours (the current one and those before it) and p50/p95 are estimates from
    duration buckets a factor sqrt(2) apart (within that factor of the exact figure, usually a few percent)."""
    return store_of(request).task_metrics()


@router.get("/pipeline-status", response_model=PipelineStatus)
def pipeline_status(request: Request) -> dict[str, Any]:
    """Running, pending, waiting and recent tasks, the project manager, runners, the health rules' flags and the
    pauses in force."""
    settings: Settings = request.app.state.settings
    limits = Limits()
    snapshot = request.app.state.metrics.health_snapshot()
    running = snapshot.running
    oldest = running[0] if running else None
    return {
        "generated_at": snapshot.now,
        "counts": {"total": sum(snapshot.by_status.values()), "by_status": snapshot.by_status},
        "running": running,
        "oldest_running_log": _log_tail(task_log_path(settings, oldest["id"])) if oldest else None,
        "pending": snapshot.pending,
        "needs_decision": snapshot.needs_decision,
        "recent": snapshot.recent[: limits.recent],
        "success_24h": snapshot.success_24h,
        "project_manager": snapshot.components.get(health.MANAGER),
        "runners": snapshot.runners,
        "components": snapshot.components,
        "attention": health.evaluate(snapshot, settings),
        "pauses": snapshot.pauses,
        "oldest_decision_seconds": snapshot.oldest_decision_seconds,
        "spend_today": snapshot.spend_today,
    }


def _log_tail(path: Path) -> list[str] | None:
    """The last lines of a task log on this host (None when the log lives elsewhere); reads only the file's end."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(handle.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return text.splitlines()[-LOG_TAIL_LINES:]
