"""The Telegram notifier against a real API: what it alerts on, once, within the rate limit, read through the typed
client (a monitor issue is named by its ``rule``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import Task, TaskStatus
from coherence_network.settings import Settings
from coherence_network.telegram.notifier import REMEMBER_SECONDS, Notifier
from coherence_network.telegram.outbox import BotState
from coherence_network.telegram.ratelimit import TokenBucket
from tests.support.api import ServedApi


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


def test_notifier_rate_limit_defers_alerts_and_forgets_old_conditions(
    client: ApiClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = [_ended(client, f"item {n}", TaskStatus.NEEDS_DECISION, decision_prompt=f"Q{n}?") for n in (1, 2, 3)]
    state = BotState(tmp_path / "state.json")
    notifier = Notifier(Settings(telegram_chat_ids="-100"), client, state)
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
    clock = [time.time() + REMEMBER_SECONDS + 1]
    monkeypatch.setattr("coherence_network.telegram.notifier.time.time", lambda: clock[0])
    notifier.run_once()
    assert state.notified == {}
