"""The Telegram notifier against a real API: what it alerts on, once, within the rate limit, read through the typed
client (a monitor issue is named by its ``rule``)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import Task, TaskStatus
from coherence_network.settings import Settings
from coherence_network.telegram.botapi import BotApi
from coherence_network.telegram.notifier import REMEMBER_SECONDS, Notifier
from coherence_network.telegram.outbox import BotState, Sender
from coherence_network.telegram.ratelimit import TokenBucket
from tests.support.api import ServedApi
from tests.support.fake_telegram import TOKEN, FakeTelegram
from tests.support.net import wait_until


@pytest.fixture
def client(served_api: ServedApi) -> Iterator[ApiClient]:
    with ApiClient(served_api.url, token="", retries=0) as api:
        yield api


def _ended(client: ApiClient, direction: str, status: TaskStatus, **fields: object) -> Task:
    """A task run by a runner named "r" that ended with ``status``."""
    task = client.create_task(direction, "impl", context={"item": direction})
    claimed = client.claim("r", wait_seconds=0)
    assert claimed is not None and claimed.id == task.id
    return client.finish(task.id, claimed.claim_token, status, **fields)


def _texts(state: BotState) -> list[str]:
    return [m["text"] for m in state.outbox]


def test_notifier_alerts_once_and_skips_history(client: ApiClient, tmp_path: Path) -> None:
    old = _ended(client, "old failure", TaskStatus.FAILED, exit_code=1, output="boom")
    waiting = _ended(client, "ship", TaskStatus.NEEDS_DECISION, decision_prompt="Ship it?")
    state = BotState(tmp_path / "state.json")
    notifier = Notifier(Settings(telegram_chat_ids="-100"), client, state)
    notifier.run_once()
    assert len(state.outbox) == 1 and "Ship it?" in state.outbox[0]["text"]  # the old failure is history
    assert f"/reply {waiting.id} <decision>" in state.outbox[0]["text"] and state.outbox[0]["chat_id"] == -100
    notifier.run_once()
    assert len(state.outbox) == 1  # nothing twice

    failed = _ended(client, "new failure", TaskStatus.FAILED, exit_code=4, output="boom")
    client.post("/api/agent/monitor-issues", {"host": "h", "issues": [
        {"rule": "disk_low", "severity": "high", "message": "12 MiB free"},
        {"rule": "stuck", "severity": "high", "message": "a health rule's copy (an older monitor's): not twice"},
        {"rule": "slow", "severity": "low", "message": "meh"}]})
    client.post("/api/agent/fatal-issues", {"component": "agent_runner", "reason": "crashed 5 times", "host": "h"})
    notifier.run_once()
    new = _texts(state)[1:]
    assert len(new) == 3, new
    assert new[0] == "FATAL: [agent_runner] crashed 5 times -> coherence fatal --clear (once fixed)"
    assert new[1] == "Monitor issue on h: [disk_low] (high) 12 MiB free -> coherence cleanup --days 3"
    assert f"Task #{failed.id} (impl: new failure) failed for good (exit 4" in new[2] and f"/task {failed.id}" in new[2]
    assert all(str(old.id) not in text.split()[1] for text in new)
    notifier.run_once()
    assert len(state.outbox) == 4
    assert BotState(tmp_path / "state.json").notified.keys() == state.notified.keys()  # persisted

    client.pause("cli:alice", "provider down", task_type="impl")  # each pause is told once: who, why, how to resume
    notifier.run_once()
    notifier.run_once()
    assert len(state.outbox) == 5
    assert re.fullmatch(r"Paused impl since \S+ \S+ UTC by cli:alice: provider down -> /resume impl", _texts(state)[4])


def test_notifier_rate_limit_defers_alerts_and_forgets_old_conditions(client: ApiClient, tmp_path: Path) -> None:
    asked = [_ended(client, f"item {n}", TaskStatus.NEEDS_DECISION, decision_prompt=f"Q{n}?") for n in (1, 2, 3)]
    state = BotState(tmp_path / "state.json")
    clock = [time.time()]
    notifier = Notifier(Settings(telegram_chat_ids="-100"), client, state, clock=lambda: clock[0])
    now = [0.0]
    notifier.buckets[-100] = TokenBucket(2, 1 / 60, clock=lambda: now[0])
    notifier.run_once()
    assert [t.split("\n")[1] for t in _texts(state)] == ["Q1?", "Q2?"]
    notifier.run_once()
    assert len(state.outbox) == 2  # held back, not dropped
    now[0] += 60
    notifier.run_once()
    assert [t.split("\n")[1] for t in _texts(state)] == ["Q1?", "Q2?", "Q3?"]

    # A condition that is gone long enough is forgotten, so it is news again when it returns.
    for task in asked:
        client.decide(task.id, "yes", "api:test")
    clock[0] += REMEMBER_SECONDS + 1
    notifier.run_once()
    assert state.notified == {} and state.reminders == {}


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    server = FakeTelegram().start()
    yield server
    server.stop()


def test_waiting_decisions_are_reminded_ever_more_rarely_across_a_restart(
    client: ApiClient, fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    """A decision left waiting is reminded of 1 h after its alert, then 2 h later, then at most 3 h apart (the cap),
    each reminder delivered through the Bot API once; a restart of the bot (its state file read again) neither
    reminds early nor forgets the schedule; an answer ends the reminders. A backlog item's question says when the
    project manager's decision timeout takes its default. Time is the notifier's clock, moved by the test."""
    settings = Settings(telegram_chat_ids="-100", telegram_remind_after_hours=1, telegram_remind_max_hours=3,
                        pipeline_needs_decision_timeout_hours=24, pipeline_needs_decision_default="the simplest")
    task = _ended(client, "ship", TaskStatus.NEEDS_DECISION, decision_prompt="Ship it?")
    stop = threading.Event()
    path = tmp_path / "state.json"
    clock = [time.time()]

    def started(state: BotState) -> Notifier:
        sender = Sender(state, BotApi(TOKEN, fake_telegram.base, 5), stop)
        threading.Thread(target=sender.run, daemon=True).start()
        return Notifier(settings, client, state, clock=lambda: clock[0])

    def delivered(count: int) -> list[str]:
        wait_until(lambda: len(fake_telegram.texts(-100)) >= count, 10, f"{count} message(s) delivered")
        return fake_telegram.texts(-100)

    def after(hours: float) -> None:
        clock[0] += hours * 3600
        notifier.run_once()

    deadline = f"{task.updated_at + timedelta(hours=24):%Y-%m-%d %H:%M} UTC"
    try:
        notifier = started(BotState(path))
        notifier.run_once()
        [alert] = delivered(1)
        default = f"Unanswered by about {deadline}, the project manager records its default answer: the simplest"
        assert "Ship it?" in alert and default in alert
        after(0.99)
        assert len(notifier.state.outbox) == 0 and len(fake_telegram.texts(-100)) == 1  # not due yet
        after(0.02)
        first = delivered(2)[1]
        assert first.startswith(f"Reminder: task #{task.id} (impl: ship) has waited 61 min for a decision:\nShip it?")
        assert f"/reply {task.id} <decision>" in first and "Next reminder in 2.0 h if it still waits." in first
        assert deadline in first
        after(1.9)
        stop.set()  # the bot stops; a new one reads the same state file
        stop = threading.Event()
        notifier = started(BotState(path))
        notifier.run_once()
        assert len(delivered(2)) == 2  # a restart does not remind at once
        after(0.11)
        assert "has waited 3.0 h" in delivered(3)[2] and "Next reminder in 3.0 h" in delivered(3)[2]  # capped
        after(2.9)
        assert len(fake_telegram.texts(-100)) == 3
        after(0.11)
        assert "has waited 6.0 h" in delivered(4)[3]
        client.decide(task.id, "yes", "api:test")
        after(5)
        assert notifier.state.reminders == {} and len(fake_telegram.texts(-100)) == 4
        assert BotState(path).reminders == {}
    finally:
        stop.set()


def test_a_decision_outside_the_backlog_is_reminded_without_a_deadline(client: ApiClient, tmp_path: Path) -> None:
    """No timeout answers a task that is not a backlog item's (nor any task while the timeout is 0): the reminder
    says only how long it has waited. TELEGRAM_REMIND_AFTER_HOURS=0 reminds never."""
    created = client.create_task("a question from a script", "run", command="true")
    claimed = client.claim("r", wait_seconds=0)
    assert claimed is not None
    client.finish(created.id, claimed.claim_token, TaskStatus.NEEDS_DECISION, decision_prompt="Go?")
    clock = [time.time()]
    for hours, reminded in ((1.0, True), (0.0, False)):
        state = BotState(tmp_path / f"state-{hours}.json")
        settings = Settings(telegram_chat_ids="-100", telegram_remind_after_hours=hours,
                            pipeline_needs_decision_timeout_hours=24)
        notifier = Notifier(settings, client, state, clock=lambda: clock[0])
        notifier.run_once()
        clock[0] += 2 * 3600
        notifier.run_once()
        texts = _texts(state)
        assert "Unanswered" not in texts[0] and len(texts) == (2 if reminded else 1)
        if reminded:
            assert texts[1].startswith(f"Reminder: task #{created.id} (run: a question from a script) has waited")
            assert "Unanswered" not in texts[1]
