"""Reminders of decisions still waiting: TELEGRAM_REMIND_AFTER_HOURS after a chat's alert, then after twice as long
each time, up to TELEGRAM_REMIND_MAX_HOURS apart. When each is due is kept per chat and decision in the bot's state
file (saved atomically with the message), so a restart neither reminds at once nor forgets the schedule; an answer
ends it. A backlog item's question says when the project manager's decision timeout takes its default."""

from __future__ import annotations

from datetime import datetime, timedelta

from coherence_network.contract import Task
from coherence_network.settings import Settings
from coherence_network.status_view import duration
from coherence_network.telegram.wording import about

_MAX_DOUBLINGS = 32  # 2**32 hours is past any cap; keeps the float finite whatever the count


def remind_delay(settings: Settings, sent: int) -> float:
    """Seconds from the alert (``sent`` 0) or from the last of ``sent`` reminders to the next reminder."""
    first = settings.telegram_remind_after_hours * 3600
    return min(first * 2 ** min(sent, _MAX_DOUBLINGS), settings.telegram_remind_max_hours * 3600)


def default_deadline(task: Task, settings: Settings) -> str | None:
    """What happens to an unanswered backlog item's question, and from when (the project manager's
    PIPELINE_NEEDS_DECISION_TIMEOUT_HOURS, counted from when it was asked, as this host's settings say); None for
    a task outside the backlog or without a timeout: nothing answers it but a person."""
    hours = settings.pipeline_needs_decision_timeout_hours
    if not hours or not (task.context or {}).get("item"):
        return None
    deadline = f"{task.updated_at + timedelta(hours=hours):%Y-%m-%d %H:%M} UTC"
    answer = settings.pipeline_needs_decision_default
    if answer:
        return f"Unanswered by about {deadline}, the project manager records its default answer: {answer[:300]}"
    return f"Unanswered by about {deadline}, the project manager skips the item (the question stays open)."


def reminder_text(task: Task, now: datetime, settings: Settings, next_in: float) -> str:
    """The reminder: how long it has waited, the question, what the timeout will do (if one applies), the answer
    to paste, and when the next reminder comes."""
    waited = max((now - task.updated_at).total_seconds(), 0.0)
    deadline = default_deadline(task, settings)
    return (f"Reminder: task #{task.id} ({task.task_type}: {about(task)}) has waited {duration(waited)} for a "
            f"decision:\n{task.decision_prompt or '?'}\n\n" + (f"{deadline}\n" if deadline else "")
            + f"Answer with:\n/reply {task.id} <decision>\nNext reminder in {duration(next_in)} if it still waits.")
