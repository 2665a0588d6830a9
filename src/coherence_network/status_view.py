"""The human views: /api/agent/pipeline-status in layers (goal, orchestration, tasks, attention), task lists and
one task in detail; in colour only when the caller says it prints to a terminal.

An operator reads top-down: is the backlog moving (goal), is anything driving it (orchestration), what is running or
waiting (tasks), and what needs a person (attention). The JSON shape stays the API's; this only renders it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import click

from coherence_network.contract import ItemStatus, Task, TaskPage, TaskStatus
from coherence_network.grading import DEAD, STOPPED, count_states, grade, state_of

RECENT_SHOWN = 5
DIRECTION_SHOWN = 60
STATUS_COLOURS = {TaskStatus.PENDING: "blue", TaskStatus.RUNNING: "cyan", TaskStatus.COMPLETED: "green",
                  TaskStatus.FAILED: "red", TaskStatus.NEEDS_DECISION: "yellow"}


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


duration = _secs  # public: Telegram words a duration as status does


def _item(task: dict[str, Any]) -> str:
    context = task.get("context") or {}
    item = context.get("title") or context.get("item")
    return f" [{str(item)[:60]}]" if item else ""


def silence(seconds: float | None, flagged: bool) -> str:
    """How long a running task has printed nothing, as every view words it ("silent for 12 min"), and "STALLED"
    past COHERENCE_STALL_WARN_SECONDS (the rule stalled_task); empty until its runner has said."""
    if seconds is None:
        return ""
    return f"silent for {_secs(seconds)}" + (" (STALLED)" if flagged else "")


def stalled_ids(flags: list[dict[str, Any]]) -> set[int]:
    """The running tasks the rule stalled_task flags in these attention flags."""
    return {i for f in flags if f["rule"] == "stalled_task" for i in f["task_ids"]}


def _goal(status: dict[str, Any]) -> list[str]:
    manager = status.get("project_manager")
    if not manager:
        return ["GOAL", "  no project manager has reported (start it: coherence pm)"]
    info = manager.get("info") or {}
    counts = ", ".join(f"{n} {s}" for s, n in sorted((info.get("by_status") or {}).items())) or "no items"
    lines = ["GOAL", (f"  backlog {info.get('backlog', '?')}: {info.get('items', 0)} items ({counts}); "
             f"position {info.get('position', 0)}, {info.get('mode', '')}")]
    lines += [f"  in flight: item {i['number']} {i['phase']} task {i['task_id']} ({i['status']}, round "
              f"{i['iteration']}): {i['item'][:70]}" for i in info.get("in_flight", [])]
    lines += [f"  {kind}: {i['item'][:60]} - {i['reason']}" for kind in (ItemStatus.BLOCKED, ItemStatus.SKIPPED)
              for i in info.get(kind, [])]
    lines += [f"  backlog problem: {p}" for p in info.get("problems", [])]
    return lines


def _orchestration(status: dict[str, Any]) -> list[str]:
    manager = status.get("project_manager")
    lines = ["ORCHESTRATION"]
    if manager:
        lines.append(f"  project manager: {_state(manager)}, last {_secs(manager['last_seen_seconds'])} ago "
                     f"({manager['host']} pid {manager['pid']})")
    else:
        lines.append("  project manager: never seen")
    runners = status.get("runners", [])
    lines.append(f"  runners: {count_states(runners)}")
    lines += [f"    {r['id']} ({r['host']} pid {r['pid']}) {_state(r)} {_secs(r['last_seen_seconds'])} ago"
              for r in runners]
    return lines


def _state(row: dict[str, Any]) -> str:
    """alive, stopped (and why) or DEAD: only a death is shouted."""
    state = state_of(row)
    stopped = (row.get("info") or {}).get("stopped")
    return f"stopped ({stopped})" if state == STOPPED else "DEAD" if state == DEAD else state


def _tasks(status: dict[str, Any]) -> list[str]:
    by_status = status["counts"]["by_status"]
    lines = ["TASKS", "  " + ", ".join(f"{s} {n}" for s, n in by_status.items())]
    stalled = stalled_ids(status["attention"])
    for task in status["running"]:
        step = f": {task['current_step']}" if task["current_step"] else ""
        quiet = silence(task.get("silent_seconds"), task["id"] in stalled)
        lines.append(f"  running #{task['id']} {task['task_type']}{_item(task)} on {task['claimed_by']}, "
                     f"{_secs(task['elapsed_seconds'])}{', ' + quiet if quiet else ''}{step}")
    if status.get("oldest_running_log"):
        lines.append(f"  last log lines of #{status['running'][0]['id']}:")
        lines += [f"    | {line}" for line in status["oldest_running_log"][-5:]]
    for task_type, pending in sorted(status["pending"].items()):
        lines.append(f"  pending {task_type}: {pending['count']}, oldest waits {_secs(pending['oldest_wait_seconds'])}")
    if status.get("oldest_decision_seconds") is not None:
        lines.append(f"  decisions waiting: {by_status.get(TaskStatus.NEEDS_DECISION, 0)}, the oldest for "
                     f"{_secs(status['oldest_decision_seconds'])} (answer: coherence decide ID ANSWER)")
    if spend := status.get("spend_today"):
        cap = f"${spend['cap_usd']:.2f} day cap" if spend["cap_usd"] > 0 else "no day cap"
        held = " REACHED: no agent task is handed out (coherence caps set --day N)" if spend["reached"] else ""
        total = spend["cost_usd"] + (spend.get("running_usd") or 0.0)
        lines.append(f"  spend today (UTC): ${total:.2f} of {cap}, {spend['runs']} runs{held}")
    for task in status["needs_decision"]:
        lines.append(f"  decision wanted #{task['id']}{_item(task)} ({_secs(task['waiting_seconds'])}): "
                     f"{task['decision_prompt']}")
    for task in status["recent"][:RECENT_SHOWN]:
        code = "" if task["exit_code"] is None else f"exit {task['exit_code']}, "
        lines.append(f"  finished #{task['id']} {task['task_type']} {task['status']} ({code}"
                     f"{_secs(task['run_seconds'])}){_item(task)}")
    return lines


def _attention(status: dict[str, Any]) -> list[str]:
    """Each flag with its grade (ATTENTION, WARNING, INFO: grading.GRADES) and the command to paste."""
    flags = status["attention"]
    if not flags:
        return ["ATTENTION", "  none"]
    lines = ["ATTENTION"]
    for f in flags:
        tasks = f" (tasks {', '.join(map(str, f['task_ids'][:10]))})" if f["task_ids"] else ""
        where = f" (monitor on {f['host']})" if f.get("source") == "monitor" else ""
        lines.append(f"  {grade(f['severity']).label} [{f['severity']}] {f['rule']}: {f['message']}{tasks}{where}")
        if f.get("command"):
            lines.append(f"    run: {f['command']}")
    return lines


def render_status(status: dict[str, Any], *, colour: bool = False) -> str:
    layers = (_goal(status), _orchestration(status), _tasks(status), _attention(status))
    return "\n".join(line for layer in layers for line in [paint(layer[0], "bold", colour), *layer[1:]])


def paint(text: str, style: TaskStatus | str, colour: bool) -> str:
    """``text`` in a terminal style (a task status's colour, or "bold") when colour is on; as it is otherwise."""
    if not colour:
        return text
    if isinstance(style, TaskStatus):
        return click.style(text, fg=STATUS_COLOURS[style])
    return click.style(text, bold=True)


def age(since: datetime, now: datetime | None = None) -> str:
    return _secs(((now or datetime.now(UTC)) - since).total_seconds())


def failure_note(task: Task | Mapping[str, Any], now: datetime | None = None) -> str:
    """Why the task's last run failed, as every view shows it: ``<category>: <summary>``, and while an automatic
    retry waits out its backoff ``retrying at HH:MM:SS UTC after <category>: <summary>``; empty when it did not."""
    fields = task if isinstance(task, Mapping) else task.model_dump()
    category, summary = fields.get("error_category"), fields.get("error_summary")
    if not category and not summary:
        return ""
    why = f"{category or 'unknown'}" + (f": {' '.join(str(summary).split())}" if summary else "")
    due = fields.get("not_before")
    if fields.get("status") == TaskStatus.PENDING and due is not None and due > (now or datetime.now(UTC)):
        return f"retrying at {due:%H:%M:%S} UTC after {why}"
    return why


def render_task_line(task: Task, *, colour: bool = False, now: datetime | None = None) -> str:
    """One line of `coherence tasks`: id, type, status, age, why its last run failed (its error category, and
    "retry" while an automatic retry waits), the start of the direction (of the question, for a task waiting for a
    decision: that is what the operator has to answer)."""
    asks = task.status == TaskStatus.NEEDS_DECISION and task.decision_prompt
    direction = " ".join(f"asks: {task.decision_prompt}".split() if asks else task.direction.split())
    short = direction if len(direction) <= DIRECTION_SHOWN else direction[:DIRECTION_SHOWN - 1] + "…"
    status = paint(f"{task.status.value:<14}", task.status, colour)
    now = now or datetime.now(UTC)
    waits = task.status == TaskStatus.PENDING and task.not_before is not None and task.not_before > now
    why = f"{'retry ' if waits else ''}{task.error_category.value if task.error_category else ''}"
    return f"#{task.id:<6} {task.task_type.value:<6} {status} {age(task.created_at, now):>7}  {why:<19} {short}"


def render_task_page(page: TaskPage, *, colour: bool = False) -> str:
    """The listing, newest first, and where this page sits in the total."""
    now = datetime.now(UTC)
    lines = [render_task_line(task, colour=colour, now=now) for task in page.items]
    total = str(page.total) if page.total_exact else f"more than {page.total - 1}"
    if page.items:
        lines.append(f"{page.offset + 1}-{page.offset + len(page.items)} of {total} tasks")
    else:
        lines.append(f"no tasks on this page ({total} match)")
    return "\n".join(lines)


def render_task(task: Task | dict[str, Any], *, colour: bool = False, stall_warn: float | None = None) -> str:
    """One task as an operator asks about it: what and where it is, its runs, how long a running one has been
    silent (flagged past ``stall_warn`` seconds), the decision trail (question, answer, who, when), the output tail.
    Fields read ``name: value`` (Telegram's /task shows the same text)."""
    task = task if isinstance(task, Task) else Task.model_validate(task)
    lines = [paint(f"task #{task.id} {task.task_type.value}", "bold", colour),
             "status: " + paint(task.status.value, task.status, colour),
             f"direction: {task.direction[:500]}"]
    fields = (("command", task.command), ("created_at", task.created_at), ("started_at", task.started_at),
              ("finished_at", task.finished_at), ("claimed_by", task.claimed_by), ("exit_code", task.exit_code),
              ("current_step", task.current_step))
    lines += [f"{name}: {_plain(value)}" for name, value in fields if value is not None]
    lines.append(f"run: {task.claim_token} (claim token), attempts: {task.attempts} of {task.max_attempts}")
    if task.status == TaskStatus.RUNNING and task.last_output_at is not None:
        quiet = (datetime.now(UTC) - task.last_output_at).total_seconds()
        lines.append(f"output: {silence(quiet, stall_warn is not None and quiet > stall_warn)}")
    if usage := usage_text(task):
        lines.append(f"usage: {usage}")
    cancel = (("cancel_requested_at", task.cancel_requested_at), ("cancelled_by", task.cancelled_by),
              ("cancel_reason", task.cancel_reason))
    lines += [f"{name}: {_plain(value)}" for name, value in cancel if value is not None]
    if note := failure_note(task):
        lines.append(f"last failure: {note}")
    if task.context:
        lines.append(f"context: {json.dumps(task.context, default=str)}")
    if task.decision_prompt or task.decision:
        lines.append(paint("decision trail", "bold", colour))
        lines.append(f"  decision_prompt: {task.decision_prompt or '-'}")
        if task.decision is None:
            lines.append(f"  decision: (waiting; answer with: coherence decide {task.id} ANSWER)")
        else:
            lines += [f"  decision: {task.decision}", f"  decided_by: {task.decided_by or '-'}",
                      f"  decided_at: {_plain(task.decided_at)}"]
    if task.output:
        lines += [paint("output (tail):", "bold", colour), task.output.rstrip()[-2000:]]
    return "\n".join(lines)


def usage_text(task: Task) -> str:
    """What its last run's agent reported using: agent (model), tokens in/out, cost; empty when nothing."""
    parts = [f"{task.agent}" + (f" ({task.model})" if task.model else "")] if task.agent else []
    if task.tokens_in is not None or task.tokens_out is not None:
        parts.append(f"tokens {_plain(task.tokens_in)} in, {_plain(task.tokens_out)} out")
    if task.cost_usd is not None:
        parts.append(f"${task.cost_usd:.4f}")
    return ", ".join(parts)


def _plain(value: object) -> str:
    """A value for people: times in ISO 8601, nothing as "-"."""
    if value is None:
        return "-"
    return value.isoformat() if isinstance(value, datetime) else str(value)
