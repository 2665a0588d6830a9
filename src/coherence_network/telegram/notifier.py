"""Alerts: what a person must hear about (waiting decisions, fatal issues, health flags that need attention, tasks
that failed for good), queued once per chat within the chat's rate limit."""

from __future__ import annotations

import logging
import time

from coherence_network import grading
from coherence_network.client import ApiClient, ApiError
from coherence_network.contract import AttentionFlag, Task, TaskStatus
from coherence_network.outage import Outage
from coherence_network.settings import Settings
from coherence_network.status_view import failure_note
from coherence_network.telegram.outbox import BotState
from coherence_network.telegram.ratelimit import TokenBucket
from coherence_network.telegram.wording import LISTED_APART, about, flag_line, issue_line, when

log = logging.getLogger("coherence.telegram")

REMEMBER_SECONDS = 24 * 3600  # a notified condition unseen this long may be notified again when it returns


def _decision_alert(task: Task) -> str:
    return (f"Task #{task.id} ({task.task_type}: {about(task)}) needs a decision:\n"
            f"{task.decision_prompt or '?'}\n\nAnswer with:\n/reply {task.id} <decision>")


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

    def __init__(self, settings: Settings, client: ApiClient, state: BotState) -> None:
        self.settings = settings
        self.client = client
        self.state = state
        self.buckets = {chat: TokenBucket(settings.telegram_rate_burst, settings.telegram_rate_per_minute / 60)
                        for chat in settings.telegram_chats}
        # passes keep their interval; the outage only keeps the log to one line when it starts and one when it ends
        interval = settings.telegram_notify_interval
        self.api_outage = Outage(log, first_delay=interval, max_delay=interval)

    def alerts(self) -> tuple[list[tuple[str, str]], list[str]]:
        """(key, text) of everything alert-worthy now, and keys of past failures to remember silently on the
        first run (history from before the bot existed is not news)."""
        found: list[tuple[str, str]] = []
        waiting = self.client.list_tasks(status=TaskStatus.NEEDS_DECISION, order="oldest", limit=500).items
        found += [(f"decision:{t.id}:{when(t.updated_at)}", _decision_alert(t)) for t in waiting]
        found += [(f"fatal:{i.id}:{when(i.at)}", f"FATAL: {issue_line(i)}") for i in self.client.fatal_issues().items]
        # what needs attention (critical, high: grading.GRADES), graded as status and doctor grade it; decisions
        # and fatal issues are alerted above, one by one
        found += [_flag_alert(f) for f in self.client.pipeline_status().attention
                  if grading.grade(f.severity).attention and f.rule not in LISTED_APART]
        failed = self.client.list_tasks(status=TaskStatus.FAILED, order="newest", limit=50).items
        failures = [(f"failed:{t.id}:{when(t.finished_at)}", _failure_alert(t)) for t in reversed(failed)]
        if self.state.primed:
            return found + failures, []
        return found, [key for key, _ in failures]

    def run_once(self) -> None:
        try:
            alerts, history = self.alerts()
        except ApiError as exc:
            self.api_outage.failed("cannot poll the API for notifications: %s", exc)
            return
        self.api_outage.recovered("the API answers again")
        now = time.time()
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
                if held:
                    log.info("rate limit holds back %d alert(s) for chat %s until a later pass", held, chat)
            self.state.notified = {k: t for k, t in self.state.notified.items() if now - t < REMEMBER_SECONDS}
            self.state.primed = True
            self.state.save()
