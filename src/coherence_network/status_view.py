"""The human view of /api/agent/pipeline-status, in layers: goal, orchestration, tasks, attention.

An operator reads top-down: is the backlog moving (goal), is anything driving it (orchestration), what is running or
waiting (tasks), and what needs a person (attention). The JSON shape stays the API's; this only renders it.
"""

from __future__ import annotations

from typing import Any

RECENT_SHOWN = 5


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def _item(task: dict[str, Any]) -> str:
    context = task.get("context") or {}
    return f" [{context['item'][:60]}]" if context.get("item") else ""


def _goal(status: dict[str, Any]) -> list[str]:
    manager = status.get("project_manager")
    if not manager:
        return ["GOAL", "  no project manager has reported (start it: coherence pm)"]
    info = manager.get("info") or {}
    counts = ", ".join(f"{n} {s}" for s, n in sorted((info.get("by_status") or {}).items())) or "no items"
    lines = ["GOAL", f"  backlog {info.get('backlog', '?')}: {info.get('items', 0)} items ({counts}); "
             f"position {info.get('position', 0)}, {info.get('mode', '')}"]
    lines += [f"  in flight: item {i['number']} {i['phase']} task {i['task_id']} ({i['status']}, round "
              f"{i['iteration']}): {i['item'][:70]}" for i in info.get("in_flight", [])]
    lines += [f"  {kind}: {i['item'][:60]} - {i['reason']}" for kind in ("blocked", "skipped")
              for i in info.get(kind, [])]
    lines += [f"  backlog problem: {p}" for p in info.get("problems", [])]
    return lines


def _orchestration(status: dict[str, Any]) -> list[str]:
    manager = status.get("project_manager")
    lines = ["ORCHESTRATION"]
    if manager:
        state = "seen" if manager["seen"] else "STALE"
        lines.append(f"  project manager: {state}, last {_secs(manager['last_seen_seconds'])} ago "
                     f"({manager['host']} pid {manager['pid']})")
    else:
        lines.append("  project manager: never seen")
    runners = status.get("runners", [])
    seen = sum(1 for r in runners if r["seen"])
    lines.append(f"  runners: {seen} seen, {len(runners) - seen} stale")
    lines += [f"    {r['id']} ({r['host']} pid {r['pid']}) {'seen' if r['seen'] else 'STALE'} "
              f"{_secs(r['last_seen_seconds'])} ago" for r in runners]
    return lines


def _tasks(status: dict[str, Any]) -> list[str]:
    by_status = status["counts"]["by_status"]
    lines = ["TASKS", "  " + ", ".join(f"{s} {n}" for s, n in by_status.items())]
    for task in status["running"]:
        lines.append(f"  running #{task['id']} {task['task_type']}{_item(task)} on {task['claimed_by']}, "
                     f"{_secs(task['elapsed_seconds'])}" + (f": {task['current_step']}" if task["current_step"] else ""))
    if status.get("oldest_running_log"):
        lines.append(f"  last log lines of #{status['running'][0]['id']}:")
        lines += [f"    | {line}" for line in status["oldest_running_log"][-5:]]
    for task_type, pending in sorted(status["pending"].items()):
        lines.append(f"  pending {task_type}: {pending['count']}, oldest waits {_secs(pending['oldest_wait_seconds'])}")
    for task in status["needs_decision"]:
        lines.append(f"  decision wanted #{task['id']}{_item(task)} ({_secs(task['waiting_seconds'])}): "
                     f"{task['decision_prompt']}")
    for task in status["recent"][:RECENT_SHOWN]:
        lines.append(f"  finished #{task['id']} {task['task_type']} {task['status']} (exit {task['exit_code']}, "
                     f"{_secs(task['run_seconds'])}){_item(task)}")
    return lines


def _attention(status: dict[str, Any]) -> list[str]:
    flags = status["attention"]
    if not flags:
        return ["ATTENTION", "  none"]
    return ["ATTENTION"] + [
        f"  [{f['code']}] {f['message']}" + (f" (tasks {', '.join(map(str, f['task_ids'][:10]))})" if f["task_ids"] else "")
        for f in flags
    ]


def render_status(status: dict[str, Any]) -> str:
    return "\n".join(_goal(status) + _orchestration(status) + _tasks(status) + _attention(status))


def render_task(task: dict[str, Any]) -> str:
    """One task's fields an operator asks about, then its stored output tail."""
    fields = ("id", "task_type", "status", "claimed_by", "attempts", "exit_code", "current_step", "created_at",
              "started_at", "finished_at", "decision_prompt", "decision", "decided_by", "decided_at", "context")
    lines = [f"{name}: {task.get(name)}" for name in fields if task.get(name) is not None]
    lines.append(f"direction: {task['direction'][:500]}")
    if task.get("output"):
        lines += ["output (tail):", task["output"].rstrip()[-2000:]]
    return "\n".join(lines)
