"""Monitor issues, fatal issues and pipeline effectiveness: what the monitor and supervisor report, readable from
any API replica (the files under var/logs are only on the host that wrote them)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from coherence_network import grading, health
from coherence_network.api.deps import store_of
from coherence_network.api.models import COMMON_ERRORS
from coherence_network.clock import utcnow
from coherence_network.contract import FatalIssueList, MonitorIssueList, TaskStatus
from coherence_network.logfiles import REGISTRY
from coherence_network.monitor import with_command
from coherence_network.request_bodies import FatalIssueReport, MonitorIssues, UtcTime
from coherence_network.settings import Settings
from coherence_network.store import ops_issues
from coherence_network.store.stats import ALL_TYPES, success_counts
from coherence_network.store.tasks import TaskStore

router = APIRouter(prefix="/api/agent", tags=["ops-issues"], responses=COMMON_ERRORS)
MANAGER_COMPONENT = "project_manager"


@router.post("/monitor-issues")
async def post_monitor_issues(body: MonitorIssues, request: Request) -> dict[str, int]:
    """The monitor's open issues after a check (the whole set: rules not listed are resolved)."""
    issues = [issue.model_dump() for issue in body.issues]
    return await run_in_threadpool(ops_issues.replace_monitor_issues, store_of(request).engine, issues, body.host)


@router.get("/monitor-issues", response_model=MonitorIssueList)
def get_monitor_issues(request: Request) -> dict[str, Any]:
    """Open monitor issues (each with its suggested action and runbook section) and the recently resolved ones."""
    listing = ops_issues.list_monitor_issues(store_of(request).engine)
    listing = {name: [with_command(i) for i in rows] for name, rows in listing.items()}
    return {**listing, "count": len(listing["issues"])}


@router.post("/fatal-issues", status_code=201)
async def post_fatal_issue(body: FatalIssueReport, request: Request) -> dict[str, Any]:
    """A component the supervisor could not keep running."""
    return await run_in_threadpool(ops_issues.add_fatal_issue, store_of(request).engine, body.model_dump(), body.host)


@router.get("/fatal-issues", response_model=FatalIssueList)
def get_fatal_issues(request: Request) -> dict[str, Any]:
    items = ops_issues.list_fatal_issues(store_of(request).engine)
    return {"items": items, "count": len(items)}


@router.delete("/fatal-issues")
async def clear_fatal_issues(
    request: Request,
    before: UtcTime | None = Query(None, description="Only those recorded at or before this time (a clear asked "
                                   "for while the API was unreachable, applied later)"),
) -> dict[str, int]:
    """The operator fixed the cause (`coherence fatal --clear`)."""
    return {"cleared": await run_in_threadpool(ops_issues.clear_fatal_issues, store_of(request).engine, before)}


@router.get("/effectiveness")
def effectiveness(request: Request) -> dict[str, Any]:
    """Throughput, success rate, issues, backlog progress and goal proximity; formula in ``goal_proximity``."""
    store = store_of(request)
    now = utcnow()
    per_day = ops_issues.completed_per_day(store.engine, now)
    with store.engine.connect() as conn:
        week = success_counts(conn, now - timedelta(days=7), now)[ALL_TYPES]
    issues = ops_issues.monitor_issue_counts(store.engine, now - timedelta(days=7))
    fatal = len(ops_issues.list_fatal_issues(store.engine))
    graded = open_graded(request)
    serious = sum(1 for i in graded if grading.grade(i["severity"]).attention)
    backlog = backlog_progress(store, request.app.state.settings)
    counts = store.count()
    return {
        "generated_at": now,
        "throughput": {"completed_per_day": per_day, "completed_7d": sum(d["completed"] for d in per_day)},
        "success_rate_7d": week["success_rate"],
        "finished_7d": {"completed": week["completed"], "failed": week["failed"]},
        "issues": {**issues, "serious_open": serious, "fatal": fatal},
        "backlog": backlog,
        "goal_proximity": goal_proximity(backlog, counts, week["success_rate"], grading.health_term(graded, fatal)),
    }


def open_graded(request: Request) -> list[dict[str, Any]]:
    """Everything open that has a severity, each once: the health rules' flags (live) and the monitors' facts of
    their hosts, as pipeline-status lists them. The goal figure's health and the serious count are graded over these
    (grading.GRADES)."""
    return health.evaluate(request.app.state.metrics.health_snapshot(), request.app.state.settings)


def backlog_progress(store: TaskStore, settings: Settings) -> dict[str, Any] | None:
    """Backlog items by status: from the project manager's heartbeat (any replica), else its state file here."""
    manager = next((c for c in store.components() if c["name"] == MANAGER_COMPONENT), None)
    info = (manager or {}).get("info") or {}
    if "items" in info and "by_status" in info:
        by_status, total, source = info["by_status"], int(info["items"]), "heartbeat"
    else:
        try:
            state = json.loads(REGISTRY["project_manager_state.json"].path(settings).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        by_status = {}
        for item in state.get("items", {}).values():
            by_status[item["status"]] = by_status.get(item["status"], 0) + 1
        total, source = len(state.get("items", {})), "state_file"
    done = int(by_status.get("done", 0))
    return {"items": total, "by_status": by_status, "done": done,
            "fraction_done": round(done / total, 4) if total else None, "source": source}


def goal_proximity(
    backlog: dict[str, Any] | None, counts: dict[str, Any], success_rate: float | None, health_term: float
) -> dict[str, Any]:
    """0.6 x progress + 0.25 x success rate (7 d) + 0.15 x health, each in 0..1.

    progress: backlog items done / items (without a backlog: completed tasks / all tasks); success: 1 when nothing
    finished yet; health: grading.health_term over the open flags and host issues (1 with none or only low ones,
    0.75 with a medium, 0.5 with a high, 0 with a critical or a fatal issue)."""
    if backlog and backlog["items"]:
        progress = backlog["done"] / backlog["items"]
    else:
        total = counts.get("total", 0)
        progress = counts.get("by_status", {}).get(TaskStatus.COMPLETED, 0) / total if total else 0.0
    success = 1.0 if success_rate is None else success_rate
    value = round(0.6 * progress + 0.25 * success + 0.15 * health_term, 3)
    return {"value": value, "progress": round(progress, 4), "success": round(success, 4), "health": health_term,
            "formula": "0.6*progress + 0.25*success_rate_7d + 0.15*health"}
