"""The task store on both backends: every operation, every legal and illegal status move, claims under a race."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from coherence_network.clock import utcnow
from coherence_network.store import Conflict, NotFound, TaskStore
from coherence_network.store.db import create_store_engine, migrate, readiness
from coherence_network.store.failures import TypeDefaults


@pytest.fixture
def store(store_engine: Engine) -> TaskStore:
    """This module's lease and attempts; an automatic retry is due at once (backoffs: tests/integration/
    test_retries.py)."""
    store = TaskStore(store_engine, lease_seconds=30, max_attempts=2, tail_bytes=300)
    store.type_defaults = TypeDefaults(retry_delay_seconds=0)
    return store


def make(store: TaskStore, n: int = 1, task_type: str = "run") -> list[dict]:
    return [store.create(direction=f"task {i}", task_type=task_type) for i in range(n)]


def test_migrations_reach_head_and_readiness_passes(store: TaskStore) -> None:
    assert store.at_head() and store.revision() is not None
    assert all(check["ok"] for check in store.readiness())


def test_unmigrated_store_is_not_ready(store_url: str) -> None:
    engine = create_store_engine(store_url)
    checks = {c["name"]: c for c in readiness(engine)}
    assert checks["store_reachable"]["ok"] is True
    assert checks["migrations_current"]["ok"] is False
    assert "coherence migrate" in checks["migrations_current"]["detail"]


def test_create_get_and_defaults(store: TaskStore) -> None:
    task = store.create(direction="write the spec", task_type="spec", context={"item": "a"}, priority=3)
    assert task["status"] == "pending" and task["attempts"] == 0 and task["max_attempts"] == 2
    assert task["created_at"].tzinfo is not None
    again = store.get(task["id"])
    assert again["context"] == {"item": "a"} and again["priority"] == 3 and again["direction"] == "write the spec"
    with pytest.raises(NotFound):
        store.get(999_999)


def test_list_filters_orders_and_counts_a_real_total(store: TaskStore) -> None:
    make(store, 5, task_type="spec")
    make(store, 3, task_type="impl")
    store.claim("r1", types=["impl"])
    items, total = store.list(task_type="spec", limit=2, offset=0)
    assert total == 5 and len(items) == 2 and items[0]["id"] > items[1]["id"]
    items, total = store.list(task_type="spec", order="oldest", limit=10, offset=3)
    assert total == 5 and [t["direction"] for t in items] == ["task 3", "task 4"]
    running, total = store.list(status="running")
    assert total == 1 and running[0]["task_type"] == "impl"
    counts = store.count()
    assert counts["total"] == 8
    assert counts["by_status"] == {"pending": 7, "running": 1, "completed": 0, "failed": 0, "needs_decision": 0,
                                   "cancelled": 0}


def test_claim_prefers_priority_then_age_and_respects_types(store: TaskStore) -> None:
    low = store.create(direction="low", task_type="run")
    high = store.create(direction="hi", task_type="run", priority=5)
    review = store.create(direction="r", task_type="review", priority=9)
    assert store.claim("r", types=["run"])["id"] == high["id"]
    assert store.claim("r", types=["run"])["id"] == low["id"]
    assert store.claim("r", types=["run"]) is None
    claimed = store.claim("r")
    assert claimed["id"] == review["id"] and claimed["status"] == "running" and claimed["claimed_by"] == "r"
    assert claimed["attempts"] == 0 and claimed["claim_token"] == 1 and claimed["lease_expires_at"] > utcnow()


def test_finish_paths_and_the_decision_round_trip(store: TaskStore) -> None:
    (task,) = make(store)
    claim = store.claim("r")
    asked = store.finish(task["id"], claim["claim_token"], status="needs_decision", decision_prompt="ship it?")
    assert asked["status"] == "needs_decision" and asked["decision_prompt"] == "ship it?"
    decided = store.decide(task["id"], "yes", "api:alice")
    assert decided["status"] == "pending" and decided["decision"] == "yes" and decided["decided_by"] == "api:alice"
    assert decided["decided_at"] is not None
    claim = store.claim("r")
    assert claim["decision"] == "yes" and claim["claim_token"] == 2
    done = store.finish(task["id"], claim["claim_token"], status="completed", output="x" * 1000, exit_code=0)
    assert done["status"] == "completed" and done["finished_at"] is not None and done["exit_code"] == 0
    assert len(done["output"]) == 300  # bounded tail


def test_illegal_moves_conflict_and_name_the_current_status(store: TaskStore) -> None:
    (task,) = make(store)
    with pytest.raises(Conflict, match="its status is pending"):
        store.decide(task["id"], "yes", "api")
    with pytest.raises(Conflict, match="its status is pending"):
        store.retry(task["id"])
    with pytest.raises(Conflict, match="its status is pending"):
        store.finish(task["id"], 1, status="completed")
    claim = store.claim("r")
    store.finish(task["id"], claim["claim_token"], status="completed")
    for action in (lambda: store.retry(task["id"]), lambda: store.decide(task["id"], "no", "api"),
                   lambda: store.heartbeat(task["id"], claim["claim_token"])):
        with pytest.raises(Conflict, match="its status is completed") as caught:
            action()
        assert caught.value.current_status == "completed"
    assert store.get(task["id"])["status"] == "completed"
    with pytest.raises(NotFound):
        store.decide(123456, "yes", "api")
    with pytest.raises(ValueError):
        store.finish(task["id"], 1, status="running")


def test_failed_task_can_be_retried_by_an_operator(store: TaskStore) -> None:
    (task,) = make(store)
    claim = store.claim("r")
    store.finish(task["id"], claim["claim_token"], status="failed", exit_code=3, error_category="config_error")
    retried = store.retry(task["id"])
    assert retried["status"] == "pending" and retried["attempts"] == 0 and retried["exit_code"] is None
    assert store.claim("r")["claim_token"] == 2  # fencing tokens keep growing across retries


def test_release_returns_the_task_to_pending(store: TaskStore) -> None:
    (task,) = make(store)
    claim = store.claim("r")
    released = store.finish(task["id"], claim["claim_token"], status="pending")
    assert released["status"] == "pending" and released["claimed_by"] is None
    assert store.claim("r2")["claimed_by"] == "r2"


def test_heartbeat_extends_the_lease_and_records_progress(store: TaskStore) -> None:
    (task,) = make(store)
    claim = store.claim("r", lease_seconds=5)
    beat = store.heartbeat(task["id"], claim["claim_token"], progress_pct=40, current_step="compiling",
                           lease_seconds=600)
    assert beat["progress_pct"] == 40 and beat["current_step"] == "compiling"
    assert beat["lease_expires_at"] > claim["lease_expires_at"] + timedelta(seconds=500)


def test_expired_lease_is_reclaimed_and_the_zombie_is_fenced_off(store: TaskStore) -> None:
    (task,) = make(store)
    first = store.claim("dead-runner", lease_seconds=1)
    assert store.reap(now=utcnow()).reclaimed == 0
    result = store.reap(now=utcnow() + timedelta(seconds=2))
    assert (result.reclaimed, result.failed) == (1, 0)
    second = store.claim("live-runner")
    assert second["id"] == task["id"] and second["attempts"] == 1 and second["claim_token"] == 2
    with pytest.raises(Conflict, match="stale"):
        store.finish(task["id"], first["claim_token"], status="completed")
    with pytest.raises(Conflict, match="stale"):
        store.heartbeat(task["id"], first["claim_token"])
    assert store.finish(task["id"], second["claim_token"], status="completed")["claimed_by"] == "live-runner"


def test_lease_expiry_fails_the_task_once_attempts_are_spent(store: TaskStore) -> None:
    (task,) = make(store)
    for _ in range(2):  # max_attempts is 2
        assert store.claim("r", lease_seconds=1)["id"] == task["id"]
        store.reap(now=utcnow() + timedelta(seconds=2))
    failed = store.get(task["id"])
    assert failed["status"] == "failed" and failed["attempts"] == 2 and failed["finished_at"] is not None


def test_runner_registry_upserts(store: TaskStore) -> None:
    first = store.runner_heartbeat("host:1", host="host", pid=1, version="0.1", info={"workers": 2})
    second = store.runner_heartbeat("host:1", host="host", pid=1, version="0.2", info=None)
    assert second["first_seen"] == first["first_seen"] and second["last_seen"] >= first["last_seen"]
    assert [r["version"] for r in store.runners()] == ["0.2"]


def test_eight_racing_claimers_claim_each_of_500_tasks_exactly_once(store: TaskStore) -> None:
    with store.transaction() as conn:  # bulk insert: the race, not the inserts, is under test
        from coherence_network.store.schema import tasks

        now = utcnow()
        conn.execute(tasks.insert(), [
            {"direction": f"t{i}", "task_type": "run", "status": "pending", "max_attempts": 3,
             "created_at": now, "updated_at": now}
            for i in range(500)
        ])
    claimed: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def claimer(name: str) -> None:
        try:
            start.wait()
            while (task := store.claim(name)) is not None:
                with lock:
                    claimed.append(task["id"])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"r{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert len(claimed) == 500 and len(set(claimed)) == 500
    assert store.count()["by_status"]["running"] == 500
    per_runner = Counter(t["claimed_by"] for t in store.list(status="running", limit=500)[0])
    assert sum(per_runner.values()) == 500


def test_cached_count_follows_this_stores_writes_and_expires_for_others(migrated_store_url: str) -> None:
    engine = create_store_engine(migrated_store_url)
    migrate(engine)
    cached = TaskStore(engine, count_cache_seconds=3600)
    other = TaskStore(engine)  # another API replica on the same database
    assert cached.count()["total"] == 0
    cached.create(direction="mine", task_type="run")
    assert cached.count()["by_status"]["pending"] == 1  # own write: never stale
    other.create(direction="theirs", task_type="run")
    assert cached.count()["total"] == 1  # other writer: stale within the bound
    cached.count_cache_seconds = 0
    assert cached.count()["total"] == 2
    engine.dispose()


# --- safe retries and what counts as an attempt (issue 10) --------------------------------------------------------
def test_a_create_with_the_same_idempotency_key_returns_the_first_task(store: TaskStore) -> None:
    first, created = store.create_or_replay(direction="once", task_type="run", command="true", idempotency_key="k1")
    again, created_again = store.create_or_replay(direction="once", task_type="run", command="true",
                                                  idempotency_key="k1")
    assert (created, created_again) == (True, False) and again["id"] == first["id"]
    assert store.count()["total"] == 1
    with pytest.raises(Conflict, match="idempotency key 'k1' was already used by task"):
        store.create_or_replay(direction="another", task_type="run", idempotency_key="k1")
    assert store.create(direction="once", task_type="run", command="true")["id"] != first["id"]  # no key: new


def test_concurrent_creates_with_one_key_make_one_task(store: TaskStore) -> None:
    results: list[int] = []

    def create() -> None:
        results.append(store.create_or_replay(direction="d", task_type="run", idempotency_key="race")[0]["id"])

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and store.count()["total"] == 1


def test_a_retried_claim_returns_the_task_that_claim_already_got(store: TaskStore) -> None:
    first, second = make(store, 2)
    got = store.claim("r1", request_id="claim-a")
    again = store.claim("r1", request_id="claim-a")
    assert again["id"] == got["id"] == first["id"] and again["claim_token"] == got["claim_token"]
    assert store.count()["by_status"]["running"] == 1  # the retry did not take task 2
    assert store.claim("r2", request_id="claim-a")["id"] == second["id"]  # a request id is per runner
    store.finish(got["id"], got["claim_token"], status="completed")
    assert store.claim("r1", request_id="claim-a") is None  # that claim's task is done: nothing new is taken


def test_finishing_twice_with_the_same_token_and_outcome_returns_the_stored_result(store: TaskStore) -> None:
    (task,) = make(store)
    claimed = store.claim("r")
    done = store.finish(task["id"], claimed["claim_token"], status="completed", output="ok", exit_code=0)
    assert store.finish(task["id"], claimed["claim_token"], status="completed", output="ok", exit_code=0) == done
    with pytest.raises(Conflict, match="its status is completed"):
        store.finish(task["id"], claimed["claim_token"], status="failed", exit_code=1)
    with pytest.raises(Conflict):
        store.heartbeat(task["id"], claimed["claim_token"])


def test_attempts_count_failures_and_expiries_not_decisions_or_releases(store: TaskStore) -> None:
    (task,) = make(store)  # max_attempts is 2
    for _ in range(3):  # three questions, each answered: no attempt is used up
        claimed = store.claim("r")
        store.finish(task["id"], claimed["claim_token"], status="needs_decision", decision_prompt="go on?")
        store.decide(task["id"], "yes", "api:test")
    claimed = store.claim("r")
    store.finish(task["id"], claimed["claim_token"], status="pending")  # a release
    claimed = store.claim("r", lease_seconds=1)
    assert claimed["attempts"] == 0 and claimed["claim_token"] == 5
    assert store.reap(now=utcnow() + timedelta(seconds=2)).reclaimed == 1  # first expiry: 1 of 2 attempts
    claimed = store.claim("r")
    failed = store.finish(task["id"], claimed["claim_token"], status="failed", exit_code=1)
    assert failed["attempts"] == 2 and failed["status"] == "failed"
    assert store.retry(task["id"])["attempts"] == 0


def test_the_same_decision_again_is_a_repeat_not_a_conflict(store: TaskStore) -> None:
    (task,) = make(store)
    claimed = store.claim("r")
    store.finish(task["id"], claimed["claim_token"], status="needs_decision", decision_prompt="ship?")
    decided = store.decide(task["id"], "yes", "api:alice")
    assert store.decide(task["id"], "yes", "api:alice") == decided
    with pytest.raises(Conflict, match="its status is pending"):
        store.decide(task["id"], "no", "api:alice")


def test_the_database_refuses_a_status_outside_the_contract(store: TaskStore) -> None:
    (task,) = make(store)
    with pytest.raises(sa.exc.IntegrityError):
        with store.transaction() as conn:
            conn.execute(sa.text("UPDATE tasks SET status = 'paused' WHERE id = :id"), {"id": task["id"]})
    assert store.get(task["id"])["status"] == "pending"


def test_a_lease_starts_once_the_sqlite_write_lock_is_held(tmp_path) -> None:
    """Another writer holds SQLite's lock for longer than the lease (a long checkpoint, another process): claims,
    finish-and-claim and heartbeats wait for it, and the lease they grant counts from when they got the lock, so a
    runner never receives a claim whose lease ran out while it waited (the chaos bench's store outage on SQLite)."""
    import sqlite3
    import time

    engine = create_store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    store = TaskStore(engine, lease_seconds=1, max_attempts=2, tail_bytes=300)
    first, second = make(store, 2)
    held = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    answers: dict[str, dict] = {}

    def hold_the_lock_while(name: str, act) -> float:
        held.execute("BEGIN IMMEDIATE")
        worker = threading.Thread(target=lambda: answers.__setitem__(name, act()))
        worker.start()
        time.sleep(1.5)  # the outage itself: longer than the lease
        released = utcnow()
        held.execute("COMMIT")
        worker.join(10)
        return released

    try:
        released = hold_the_lock_while("claim", lambda: store.claim("r1"))
        claim = answers["claim"]
        assert claim["id"] == first["id"] and claim["started_at"] >= released
        assert claim["lease_expires_at"] >= released + timedelta(seconds=1)
        released = hold_the_lock_while("beat", lambda: store.heartbeat(claim["id"], claim["claim_token"]))
        assert answers["beat"]["lease_expires_at"] >= released + timedelta(seconds=1)
        released = hold_the_lock_while("next", lambda: store.finish_and_claim(
            claim["id"], claim["claim_token"], status="completed", runner_id="r1"))
        _, following = answers["next"]
        assert following["id"] == second["id"] and following["lease_expires_at"] >= released + timedelta(seconds=1)
        # the reaper waited behind the same lock as the renewals: it requeues nothing, however expired the lease
        hold_the_lock_while("reap", lambda: store.reap(max_lock_wait=1.0))
        assert answers["reap"].waited is not None and answers["reap"].waited > 1.0
        assert (answers["reap"].reclaimed, store.get(second["id"])["status"]) == (0, "running")
        assert store.reap(max_lock_wait=1.0).reclaimed == 1  # a pass that got the lock at once does its work
    finally:
        held.close()
        engine.dispose()
