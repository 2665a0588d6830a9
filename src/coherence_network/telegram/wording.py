"""How the bot words what it tells people, shared by its answers to commands and its alerts."""

from __future__ import annotations

from datetime import datetime

from coherence_network.contract import AttentionFlag, FatalIssue, Task

MAX_TEXT = 4000  # Telegram's limit is 4096 UTF-16 units; leave room
# Flags whose items Telegram lists one by one (each decision, each fatal issue): not a second time as a flag.
LISTED_APART = frozenset({"needs_decision", "component_held_back"})


def clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 15] + "\n...(truncated)"


def issue_line(issue: FatalIssue) -> str:
    """A fatal issue by its component, and the command that clears it once fixed."""
    return f"[{issue.component}] {issue.reason} -> coherence fatal --clear (once fixed)"


def flag_line(flag: AttentionFlag) -> str:
    """A health flag as a line, like a monitor issue: rule, severity, message, and the command to paste."""
    return f"[{flag.rule}] ({flag.severity}) {flag.message}" + (f" -> {flag.command}" if flag.command else "")


def about(task: Task) -> str:
    """What a task is about, on one short line: its backlog item, else its direction."""
    context = task.context or {}
    return " ".join(str(context.get("title") or context.get("item") or task.direction).split())[:80]


def waiting_line(task: Task) -> str:
    return f"#{task.id}: {task.decision_prompt or '?'} -> /reply {task.id} <decision>"


def when(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""
