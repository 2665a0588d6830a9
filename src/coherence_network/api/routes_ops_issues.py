"""Monitor issues, fatal issues and pipeline effectiveness (its formula in api/effectiveness.py): what the monitor
and supervisor report, readable from any API replica (the files under var/logs are only on the host that wrote them)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from coherence_network import grading, health
from coherence_network.api.deps import actor_of, store_of
from coherence_network.api.effectiveness import backlog_progress, goal_proximity
from coherence_network.api.models import COMMON_ERRORS
from coherence_network.clock import utcnow
from coherence_network.contract import FatalIssueList, MonitorIssueList
from coherence_network.monitor import with_command
from coherence_network.request_bodies import FatalIssueReport, MonitorIssues, UtcTime
from coherence_network.store.stats import ALL_TYPES

router = APIRouter(prefix="/api/agent", tags=["ops-issues"], responses=COMMON_ERRORS)


@router.post("/monitor-issues")
async def post_monitor_issues(body: MonitorIssues, request: Request) -> dict[str, int]:
    """The monitor's open issues after a check (the whole set: rules not listed are resolved)."""
    issues = [issue.model_dump() for issue in body.issues]
    return await run_in_threadpool(store_of(request).replace_monitor_issues, issues, body.host)


@router.get("/monitor-issues", response_model=MonitorIssueList)
def get_monitor_issues(request: Request) -> dict[str, Any]:
    """Open monitor issues (each with its suggested action and runbook section) and the recently resolved ones."""
    listing = store_of(request).list_monitor_issues()
    listing = {name: [with_command(i) for i in rows] for name, rows in listing.items()}
    return {**listing, "count": len(listing["issues"])}


@router.post("/fatal-issues", status_code=201)
async def post_fatal_issue(body: FatalIssueReport, request: Request) -> dict[str, Any]:
    """A component the supervisor could not keep running."""
    return await run_in_threadpool(store_of(request).add_fatal_issue, body.model_dump(), body.host)


@router.get("/fatal-issues", response_model=FatalIssueList)
def get_fatal_issues(request: Request) -> dict[str, Any]:
    items = store_of(request).list_fatal_issues()
    return {"items": items, "count": len(items)}


@router.delete("/fatal-issues")
async def clear_fatal_issues(
    request: Request,
    before: UtcTime | None = Query(None, description="Only those recorded at or before this time (a clear asked "
                                   "for while the API was unreachable, applied later)"),
) -> dict[str, int]:
    """The operator fixed the cause (`coherence fatal --clear`); a clear that cleared any is in the audit trail."""
    clear = store_of(request).clear_fatal_issues
    return {"cleared": await run_in_threadpool(lambda: clear(before, actor=actor_of(request)))}


@router.get("/effectiveness")
def effectiveness(request: Request) -> dict[str, Any]:
    """Throughput, success rate, issues, backlog progress and goal proximity; formula in ``goal_proximity``."""
    store = store_of(request)
    now = utcnow()
    per_day = store.completed_per_day(now)
    week = store.success_counts(now - timedelta(days=7), now)[ALL_TYPES]
    issues = store.monitor_issue_counts(now - timedelta(days=7))
    fatal = len(store.list_fatal_issues())
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
