"""Limits per task type (issue 21 item 6) and the type policies' write side, on both stores: the claim never hands
out a type beyond its max_running, not in one claim of several, not under claims racing on many threads; a runner
still gets other types, and a claim waiting on a full type gets the slot the moment it frees."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from coherence_network.store import TaskStore
from coherence_network.store.schema import audit

LIMIT = 2


def _tasks(store: TaskStore, task_type: str, count: int, priority: int = 0) -> list[int]:
    return [store.create(direction=f"{task_type} {n}", task_type=task_type, priority=priority)["id"]
            for n in range(count)]


def _running(store: TaskStore, task_type: str) -> int:
    return store.list(status="running", task_type=task_type, limit=1)[1]


def _audit(engine: sa.Engine) -> list[dict[str, Any]]:
    """The policy records of the audit trail (read here until its read side lands)."""
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            sa.select(audit.c.actor, audit.c.channel, audit.c.target, audit.c.detail)
            .where(audit.c.action == "policy").order_by(audit.c.id))]


def test_a_type_at_its_limit_is_passed_over_and_other_types_still_claimed(store: TaskStore) -> None:
    store.set_type_policy("impl", "cli:ops", max_running=LIMIT)
    impl = _tasks(store, "impl", 4, priority=9)
    spec = _tasks(store, "spec", 2)
    claimed = store.claim_many("r1", 10)  # one claim of several: at most LIMIT impl, however urgent the rest
    assert [t["id"] for t in claimed] == impl[:LIMIT] + spec
    assert store.claim("r2", types=["impl"]) is None
    assert store.claim_many("r2", 5, types=["impl", "spec"]) == []
    # a finish frees a slot: the claim in the same transaction takes it
    _, following = store.finish_and_claim(claimed[0]["id"], claimed[0]["claim_token"], status="completed",
                                          runner_id="r1", types=["impl"])
    assert following is not None and following["id"] == impl[2]
    assert _running(store, "impl") == LIMIT
    # a limit raised frees slots at once; cleared, the type has none
    store.set_type_policy("impl", "cli:ops", max_running=LIMIT + 1)
    assert store.claim("r3")["id"] == impl[3]
    assert _running(store, "impl") == LIMIT + 1


def test_a_limit_lowered_below_the_running_count_stops_nothing_and_waits(store: TaskStore) -> None:
    _tasks(store, "impl", 5)
    running = store.claim_many("r1", 3)
    store.set_type_policy("impl", "cli:ops", max_running=1)
    assert store.claim("r2") is None
    for task in running[:2]:
        store.finish(task["id"], task["claim_token"], status="completed")
    assert store.claim("r2") is None  # still one running: at the limit
    store.finish(running[2]["id"], running[2]["claim_token"], status="completed")
    assert store.claim("r2") is not None
    assert store.set_type_policy("impl", "cli:ops", max_running=None)[0]["max_running"] is None
    assert store.claim("r2") is not None  # no limit now: the last one goes too
    assert _running(store, "impl") == 2


def _race(threads: int, work: Callable[[int], None]) -> None:
    """Run ``work(n)`` on ``threads`` threads released at the same instant; re-raise the first error."""
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            start.wait(10)
            work(n)
        except BaseException as error:  # noqa: BLE001 - carried to the test's thread
            errors.append(error)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("several", [1, 3], ids=["claim", "claim_many"])
def test_claims_racing_on_many_threads_never_exceed_the_limit(store: TaskStore, several: int) -> None:
    """Eight claims at once, five rounds: each round exactly LIMIT impl are taken (never more), and the spec tasks
    all go (the limit holds its type only)."""
    store.set_type_policy("impl", "cli:ops", max_running=LIMIT)
    for _ in range(5):
        _tasks(store, "impl", 12)
        _tasks(store, "spec", 4)
        got: list[dict[str, Any]] = []
        lock = threading.Lock()

        def claim(n: int) -> None:
            claimed = store.claim_many(f"r{n}", several)
            with lock:
                got.extend(claimed)

        _race(8, claim)
        by_type = [t["task_type"] for t in got]
        assert by_type.count("impl") == LIMIT and _running(store, "impl") == LIMIT, by_type
        assert by_type.count("spec") == min(4, 8 * several - LIMIT), by_type
        for task in got:
            store.finish(task["id"], task["claim_token"], status="completed")
        for task in store.claim_many("drain", 100, types=["spec"]):
            store.finish(task["id"], task["claim_token"], status="completed")


def test_set_type_policy_changes_only_what_it_is_given_and_records_each_change(
    store: TaskStore, store_engine: sa.Engine
) -> None:
    policy, changed = store.set_type_policy("impl", "cli:alice", max_running=2, retry_delay_seconds=30.0)
    assert changed and (policy["max_running"], policy["retry_delay_seconds"], policy["updated_by"]) == (
        2, 30.0, "cli:alice")
    policy, changed = store.set_type_policy("impl", "console:bob", breaker_failures=5)
    assert changed and (policy["max_running"], policy["breaker_failures"]) == (2, 5)
    assert store.set_type_policy("impl", "cli:alice", max_running=2) == (policy, False)  # so already: no change
    policy, changed = store.set_type_policy("impl", "cli:alice", max_running=None)
    assert changed and policy["max_running"] is None and policy["retry_delay_seconds"] == 30.0
    records = _audit(store_engine)
    assert [(r["actor"], r["channel"], r["target"]) for r in records] == [
        ("cli:alice", "cli", "impl"), ("console:bob", "console", "impl"), ("cli:alice", "cli", "impl")]
    assert [r["detail"] for r in records] == [{"max_running": [None, 2], "retry_delay_seconds": [None, 30.0]},
                       {"breaker_failures": [None, 5]}, {"max_running": [2, None]}]
    listed = store.type_policies()
    assert [(p["task_type"], p["max_running"], p["breaker_failures"], p["running"]) for p in listed] == [
        ("impl", None, 5, 0)]
    every = store.type_policies(every_type=["impl", "spec"])
    assert [(p["task_type"], p["breaker_failures"], p["updated_by"]) for p in every] == [
        ("impl", 5, "cli:alice"), ("spec", None, None)]


@pytest.mark.parametrize(("fields", "message"), [
    ({"max_running": 0}, "at least 1"),
    ({"max_running": 2.5}, "whole number"),
    ({"breaker_failures": -1}, "0 or more"),
    ({"retry_delay_seconds": 0}, "more than 0"),
    ({"retry_delay_seconds": 60, "retry_max_delay_seconds": 10}, "must not be below"),
    ({"max_runnin": 1}, "unknown policy fields"),
])
def test_bad_policy_values_are_refused_and_nothing_is_stored(
    store: TaskStore, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.set_type_policy("impl", "cli:ops", **fields)
    assert store.type_policies() == []
