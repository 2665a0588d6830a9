"""Alerts: what a person must hear about (waiting decisions, fatal issues, health flags that need attention, pauses,
tasks that failed for good), queued once per chat within the chat's rate limit; and reminders of decisions still
waiting (reminders.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from coherence_network import grading
from coherence_network.client import ApiClient, ApiError
from coherence_network.contract import AttentionFlag, Task, TaskStatus
from coherence_network.outage import Outage
from coherence_network.settings import Settings
from coherence_network.status_view import failure_note
from coherence_network.telegram.outbox import BotState
from coherence_network.telegram.ratelimit import TokenBucket
from coherence_network.telegram.reminders import default_deadline, remind_delay, reminder_text
from coherence_network.telegram.steering import pause_line
from coherence_network.telegram.wording import LISTED_APART, about, flag_line, issue_line, when

log = logging.getLogger("coherence.telegram")

REMEMBER_SECONDS = 24 * 3600  # a notified condition unseen this long may be notified again when it returns


def _decision_key(task: Task) -> str:
    return f"decision:{task.id}:{when(task.updated_at)}"


def _decision_alert(task: Task, settings: Settings) -> str:
    deadline = default_deadline(task, settings)
    return (f"Task #{task.id} ({task.task_type}: {about(task)}) needs a decision:\n"
            f"{task.decision_prompt or '?'}\n\n" + (f"{deadline}\n" if deadline else "")
            + f"Answer with:\n/reply {task.id} <decision>")


def _flag_alert(flag: AttentionFlag) -> tuple[str, str]:
    """(key, text) of a flag: a health rule's by its code, a monitor's host fact by its rule and since when."""
    if flag.source == "monitor":
        return f"monitor:{flag.rule}:{when(flag.since)}", f"Monitor issue on {flag.host}: {flag_line(flag)}"
    return f"health:{flag.rule}", f"Health: {flag_line(flag)}"


def _failure_alert(task: Task) -> str:
    tail = (task.output or "").strip()[-300:]
    return (f"Task #{task.id} ({task.task_type}: {about(task)}) failed for good "
            + ("(" if task.exit_code is None else f"(exit {task.exit_code}, ")
            + f"{task.attempts} failed attempt(s) of {task.max_attempts} allowed)."
            + (f"\nWhy: {failure_note(task)}" if task.error_category or task.error_summary else "")
            + (f"\nLast output:\n{tail}" if tail else "") + f"\nDetails: /task {task.id}")


class Notifier:
    """Polls the API for what a person must hear about and queues each thing once per chat, within the chat's
    rate limit (what the limit holds back is queued on a later pass, not lost)."""

    def __init__(self, settings: Settings, client: ApiClient, state: BotState,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.client = client
        self.state = state
        self.clock = clock  # wall-clock seconds: when conditions were seen and reminders are due
        self.buckets = {chat: TokenBucket(settings.telegram_rate_burst, settings.telegram_rate_per_minute / 60)
                        for chat in settings.telegram_chats}
        # passes keep their interval; the outage only keeps the log to one line when it starts and one when it ends
        interval = settings.telegram_notify_interval
        self.api_outage = Outage(log, first_delay=interval, max_delay=interval)

    def alerts(self, waiting: list[Task]) -> tuple[list[tuple[str, str]], list[str]]:
        """(key, text) of everything alert-worthy now (``waiting``: the decisions waiting), and keys of past
        failures to remember silently on the first run (history from before the bot existed is not news)."""
        found: list[tuple[str, str]] = [(_decision_key(t), _decision_alert(t, self.settings)) for t in waiting]
        found += [(f"fatal:{i.id}:{when(i.at)}", f"FATAL: {issue_line(i)}") for i in self.client.fatal_issues().items]
        # what needs attention (critical, high: grading.GRADES), graded as status and doctor grade it; decisions
        # and fatal issues are alerted above, one by one
        report = self.client.pipeline_status()
        found += [_flag_alert(f) for f in report.attention
                  if grading.grade(f.severity).attention and f.rule not in LISTED_APART]
        # a pause is a warning, yet the chats hear of each one once: who holds what and why, and how to resume
        found += [(f"pause:{p.scope}:{when(p.since)}", f"Paused {pause_line(p)}") for p in report.pauses]
        failed = self.client.list_tasks(status=TaskStatus.FAILED, order="newest", limit=50).items
        failures = [(f"failed:{t.id}:{when(t.finished_at)}", _failure_alert(t)) for t in reversed(failed)]
        if self.state.primed:
            return found + failures, []
        return found, [key for key, _ in failures]

    def run_once(self) -> None:
        try:
            waiting = self.client.list_tasks(status=TaskStatus.NEEDS_DECISION, order="oldest", limit=500).items
            alerts, history = self.alerts(waiting)
        except ApiError as exc:
            self.api_outage.failed("cannot poll the API for notifications: %s", exc)
            return
        self.api_outage.recovered("the API answers again")
        now = self.clock()
        with self.state.lock:
            for chat, bucket in self.buckets.items():
                for key in history:
                    self.state.notified[f"{chat}|{key}"] = now
                held = 0
                for key, text in alerts:
                    chat_key = f"{chat}|{key}"
                    if chat_key in self.state.notified:
                        self.state.notified[chat_key] = now
                    elif bucket.take():
                        self.state.enqueue(chat, text, chat_key, now)
                    else:
                        held += 1
                held += self._remind(chat, bucket, waiting, now)
                if held:
                    log.info("rate limit holds back %d alert(s) for chat %s until a later pass", held, chat)
            self.state.notified = {k: t for k, t in self.state.notified.items() if now - t < REMEMBER_SECONDS}
            asked = {_decision_key(t) for t in waiting}  # an answered (or re-asked) decision's reminders end
            self.state.reminders = {k: v for k, v in self.state.reminders.items() if k.split("|", 1)[1] in asked}
            self.state.primed = True
            self.state.save()

    def _remind(self, chat: int, bucket: TokenBucket, waiting: list[Task], now: float) -> int:
        """Queue the reminders due for ``chat`` (reminders.py); how many the rate limit holds back to a later pass.
        A decision is reminded of only once its alert went to the chat; its first reminder is scheduled then."""
        if not self.settings.telegram_remind_after_hours:
            return 0
        held = 0
        for task in waiting:
            key = f"{chat}|{_decision_key(task)}"
            if key not in self.state.notified:
                continue
            due = self.state.reminders.get(key)
            if due is None:
                self.state.reminders[key] = {"next": now + remind_delay(self.settings, 0), "sent": 0}
            elif due["next"] <= now:
                if not bucket.take():
                    held += 1
                    continue
                sent = int(due["sent"]) + 1
                wait = remind_delay(self.settings, sent)
                self.state.reminders[key] = {"next": now + wait, "sent": sent}  # saved with the message, at once
                self.state.enqueue(chat, reminder_text(task, datetime.fromtimestamp(now, UTC), self.settings, wait))
        return held
