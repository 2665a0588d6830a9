"""The overview page ("/"): counts, runners, attention, the charts, the goal; and its restart form."""

from __future__ import annotations

import socket
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from coherence_network import grading, health, restart
from coherence_network.api.deps import store_of
from coherence_network.api.effectiveness import backlog_progress, goal_proximity
from coherence_network.console import charts
from coherence_network.console.figures import CHART_RANGES
from coherence_network.console.forms import posted_form
from coherence_network.console.pages import error_page, render, settings_of, visit_of
from coherence_network.contract import TaskStatus
from coherence_network.monitor import with_command
from coherence_network.status_view import stalled_ids

router = APIRouter(include_in_schema=False)
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


@router.get("/")
def overview(request: Request, restart_notice: str = "",
             chart_range: str = Query("24h", alias="range")) -> HTMLResponse:
    visit = visit_of(request)
    span = CHART_RANGES.get(chart_range)
    if span is None:
        return error_page(request, 400, "Unknown range", f"range must be one of {', '.join(CHART_RANGES)}; "
                          f"{chart_range[:40]!r} is not", visit)
    settings, store = settings_of(request), store_of(request)
    snapshot = request.app.state.metrics.health_snapshot()
    now = snapshot.now
    finished = store.throughput(now, span.bucket, span.count)  # from the hourly rollup, whatever the range
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
        stalled=stalled_ids(flags),
        pending=snapshot.pending, needs_decision=snapshot.needs_decision, recent=snapshot.recent[:10],
        pauses=snapshot.pauses, oldest_decision=snapshot.oldest_decision_seconds, spend=snapshot.spend_today,
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
    visit, fields = await posted_form(request)
    component = fields.get("component", "")
    if component not in restart.TARGETS:
        return error_page(request, 400, "Restart refused",
                          f"Choose a component to restart: one of {', '.join(restart.TARGETS)}.", visit,
                          ("/#restart", "Back to the restart form"))
    given = fields.get("reason", "").strip()[:500]
    if fields.get("confirm") != "yes":
        return render(request, "restart.html", visit, component=component, reason=given,
                      consequence=RESTART_CONSEQUENCES[component])
    actor, why = f"console:{visit.session.identity}", given or "restart from the console"
    reason = f"{actor}: {why}"

    def announce() -> None:  # in the audit trail before the request is written: this API may be what restarts
        store_of(request).audit_note(actor, "restart", target=component, reason=why,
                                     detail={"host": socket.gethostname()})

    try:
        result = await run_in_threadpool(restart.request_restart, settings_of(request), component, reason, announce)
    except ValueError as exc:
        return error_page(request, 400, "Restart refused", str(exc), visit)
    notice = "requested" if result.supervisor_pid is not None else "no-supervisor"
    return RedirectResponse(f"/?{urlencode({'restart_notice': notice})}#restart", status_code=303)

