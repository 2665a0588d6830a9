"""The monitor's layered status report (var/logs/pipeline_status_report.json and .txt): 0 goal, 1 orchestration,
2 execution, 3 attention, with what goes well and what needs attention, from one check's snapshot and issues."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from coherence_network.contract import ItemStatus

if TYPE_CHECKING:  # the monitor builds its report with these: it imports this module
    from coherence_network.monitor import Issue, Snapshot


def build_report(s: Snapshot, issues: list[Issue], open_since: dict[str, str]) -> dict[str, Any]:
    """The layered status report: 0 goal, 1 orchestration, 2 execution, 3 attention; going well / needs attention.

    Who counts as seen is the API's answer (pipeline-status, by MONITOR_*_SEEN_SECONDS), never a figure of its own."""
    manager = s.part("project_manager")
    info = manager.get("info") or {}
    seen_runners = [r["id"] for r in s.part("runners") if r["seen"]]
    by_status = s.part("counts").get("by_status", {})
    running = s.part("running")
    success = s.part("success_24h")
    going_well: list[str] = []
    if s.api_reachable and not s.api_errors:
        going_well.append("API reachable and ready")
    if seen_runners:
        going_well.append(f"{len(seen_runners)} runner(s) seen")
    if running:
        going_well.append(f"{len(running)} task(s) running")
    if success.get("completed"):
        going_well.append(f"{success['completed']} task(s) completed in 24 h")
    if done := info.get("by_status", {}).get(ItemStatus.DONE):
        going_well.append(f"{done} of {info.get('items')} backlog item(s) done")
    if not issues:
        going_well.append("no open issues")
    layers = [
        {"layer": 0, "name": "goal", "backlog": info.get("backlog"), "items": info.get("items"),
         "by_status": info.get("by_status"), "position": info.get("position")},
        {"layer": 1, "name": "orchestration", "api_reachable": s.api_reachable, "api_errors": s.api_errors,
         "running_shas": s.running_shas, "disk_sha": s.disk_sha, "runners_seen": seen_runners,
         "project_manager_seen_seconds": manager.get("last_seen_seconds"),
         "project_manager_seen": manager.get("seen")},
        {"layer": 2, "name": "execution", "by_status": by_status,
         "running": [{"id": t["id"], "task_type": t["task_type"], "claimed_by": t.get("claimed_by"),
                      "elapsed_seconds": t.get("elapsed_seconds")} for t in running],
         "success_24h": success or None},
        {"layer": 3, "name": "attention",
         "issues": [{**asdict(i), "first_seen": open_since.get(i.rule)} for i in issues]},
    ]
    return {
        "generated_at": s.now.isoformat(),
        "layers": layers,
        "going_well": going_well,
        "needs_attention": [f"[{i.severity}] {i.rule}: {i.message} -> {i.action}: {i.command} "
                            f"(docs/RUNBOOK.md{i.runbook})"
                            for i in issues],
    }


def for_people(value: Any) -> str:
    """A value as a person reads it, never a Python repr: {'done': 4} -> "done 4", lists joined, None -> "-"."""
    if value is None or value == {} or value == []:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {for_people(v)}" for k, v in value.items() if v is not None) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(for_people(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render_report(report: dict[str, Any]) -> str:
    goal, orchestration, execution, attention = report["layers"]
    shas = {who: sha[:12] for who, sha in orchestration["running_shas"].items() if sha}
    disk = (orchestration["disk_sha"] or "")[:12] or None
    lines = [f"Pipeline status report {report['generated_at']}", ""]
    lines.append(f"0 goal: backlog {for_people(goal['backlog'])}: {goal['items'] or 0} item(s) "
                 f"({for_people(goal['by_status'])})")
    lines.append(f"1 orchestration: API {'up' if orchestration['api_reachable'] else 'DOWN'}, runners seen "
                 f"{len(orchestration['runners_seen'])}, code {for_people(shas)} vs disk {for_people(disk)}")
    lines.append(f"2 execution: {for_people({k: v for k, v in execution['by_status'].items() if v})}, "
                 f"{len(execution['running'])} running")
    lines.append(f"3 attention: {len(attention['issues'])} issue(s)")
    lines += ["", "Going well:"] + [f"  + {g}" for g in report["going_well"] or ["(nothing yet)"]]
    lines += ["", "Needs attention:"] + [f"  ! {n}" for n in report["needs_attention"] or ["(nothing)"]]
    return "\n".join(lines) + "\n"
