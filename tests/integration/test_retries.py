"""Retries that heal on their own and the circuit breaker, in the store on both backends: what a failure's category
and the attempts left make of it, the backoff the claim waits out, the lease reaper's lease_expired, replays, the
per-type policy, and the breaker that pauses a type after its failures in a row."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine

from coherence_network.clock import utcnow
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.contract_steering import BREAKER
from coherence_network.store import Conflict, TaskStore
from coherence_network.store.failures import TypeDefaults
from coherence_network.store.schema import type_policies
from tests.support.net import wait_until

RUN, SPEC = TaskType.RUN, TaskType.SPEC
BASE = 0.4  # the first backoff: long enough to see a claim refused, short enough to wait out


@pytest.fixture
def store(store_engine: Engine) -> TaskStore:
    store = TaskStore(store_engine, lease_seconds=30, max_attempts=3)
    store.type_defaults = TypeDefaults(retry_delay_seconds=BASE, retry_max_delay_seconds=60, breaker_failures=3)
    return store


def _fail(store: TaskStore, task_id: int, **ending: object) -> dict:
    claimed = store.claim("r")
    assert claimed is not None and claimed["id"] == task_id
    return store.finish(task_id, claimed["claim_token"], **{"status": "failed", **ending})


def _claim_when_due(store: TaskStore, **claim: object) -> dict:
    """The claim that comes once a backoff ends (each look a real claim)."""
    got: list[dict] = []
    wait_until(lambda: bool(got.append(store.claim("r", **claim)) or got[-1]), timeout=5, what="the retry's claim")
    return got[-1]


def _set_policy(store: TaskStore, task_type: str, **values: object) -> None:
    with store.transaction() as conn:
        conn.execute(type_policies.insert().values(task_type=task_type, updated_at=utcnow(), updated_by="test",
                                                   **values))


def test_a_retriable_failure_waits_out_its_backoff_then_runs_again(store: TaskStore) -> None:
    task = store.create(direction="flaky", task_type=RUN, command="false")
    before = utcnow()
    back = _fail(store, task["id"], output="half done", exit_code=1, error_category="nonzero_exit",
                 error_summary="exit 1")
    assert back["status"] == TaskStatus.PENDING and back["attempts"] == 1 and back["claimed_by"] is None
    assert (back["error_category"], back["error_summary"], back["output"]) == ("nonzero_exit", "exit 1", "half done")
    assert back["finished_at"] is None  # not settled: no finish time, no durations
    assert before + timedelta(seconds=BASE / 2) <= back["not_before"] <= utcnow() + timedelta(seconds=BASE)
    assert store.claim("r") is None  # its backoff holds it
    assert store.next_due(utcnow()) == back["not_before"]
    assert store.next_due(utcnow(), [SPEC]) is None  # no spec task waits
    again = _claim_when_due(store)
    assert again["id"] == task["id"] and again["claim_token"] == 2
    done = store.finish(task["id"], again["claim_token"], status="completed", output="ok", exit_code=0)
    assert done["status"] == TaskStatus.COMPLETED and done["attempts"] == 1
    assert done["error_category"] is None and done["error_summary"] is None


def test_a_failure_that_cannot_heal_stays_failed(store: TaskStore) -> None:
    for category in ("config_error", "agent_error", "cancelled"):
        task = store.create(direction=f"never works: {category}", task_type=RUN, command="x")
        failed = _fail(store, task["id"], exit_code=127, error_category=category, error_summary="no such command")
        assert failed["status"] == TaskStatus.FAILED and failed["attempts"] == 1 and failed["not_before"] is None
        assert failed["error_category"] == category and failed["finished_at"] is not None


def test_the_last_attempt_settles_failed_with_its_category(store: TaskStore) -> None:
    store.type_defaults = TypeDefaults(retry_delay_seconds=0, breaker_failures=0)  # due at once
    task = store.create(direction="always fails", task_type=RUN, command="false", max_attempts=2)
    assert _fail(store, task["id"], exit_code=1, error_category="timeout")["status"] == TaskStatus.PENDING
    last = _fail(store, task["id"], exit_code=1, error_category="timeout", error_summary="timed out after 5s")
    assert (last["status"], last["attempts"], last["error_category"]) == (TaskStatus.FAILED, 2, "timeout")
    assert last["run_seconds"] is not None
    assert store.list(out_of_attempts=True)[0] == [last]
    retried = store.retry(task["id"])  # an operator's retry: a fresh set of attempts, at once
    assert retried["attempts"] == 0 and retried["not_before"] is None
    assert store.list(out_of_attempts=True)[1] == 0


def test_a_failure_without_a_category_is_not_retried(store: TaskStore) -> None:
    """A runner older than categories: nothing says its failure could heal."""
    task = store.create(direction="old runner, exit 2", task_type=RUN, command="false")
    failed = _fail(store, task["id"], exit_code=2)
    assert failed["status"] == TaskStatus.FAILED and failed["error_category"] is None and failed["attempts"] == 1


def test_a_repeated_failed_finish_is_answered_with_the_retry_it_made(store: TaskStore) -> None:
    task = store.create(direction="flaky", task_type=RUN, command="false")
    claimed = store.claim("r")
    ending = {"status": "failed", "exit_code": 1, "error_category": "killed", "output": "boom"}
    first = store.finish(task["id"], claimed["claim_token"], **ending)
    assert store.finish(task["id"], claimed["claim_token"], **ending) == first  # a retry after a lost answer
    with pytest.raises(Conflict, match="its status is pending"):
        store.finish(task["id"], claimed["claim_token"], status="completed")
    assert store.get(task["id"])["attempts"] == 1


def test_an_expired_lease_is_a_lease_expired_failure_with_a_backoff(store: TaskStore) -> None:
    task = store.create(direction="its runner dies", task_type=RUN, command="sleep 9", max_attempts=2)
    claimed = store.claim("doomed-runner", lease_seconds=1)
    result = store.reap(utcnow() + timedelta(seconds=2))
    assert (result.reclaimed, result.failed) == (1, 0)
    back = store.get(task["id"])
    assert (back["status"], back["attempts"], back["error_category"]) == ("pending", 1, "lease_expired")
    assert "doomed-runner" in back["error_summary"] and back["not_before"] > utcnow()
    assert store.claim("r") is None
    with pytest.raises(Conflict):  # the dead runner's late result: the reaper's retry is not its finish
        store.finish(task["id"], claimed["claim_token"], status="failed", exit_code=1)
    again = _claim_when_due(store, lease_seconds=1)
    assert store.reap(utcnow() + timedelta(seconds=2)).failed == 1  # attempts spent: failed
    failed = store.get(task["id"])
    assert (failed["status"], failed["attempts"], failed["error_category"]) == ("failed", 2, "lease_expired")
    assert failed["claim_token"] == again["claim_token"] and failed["finished_at"] is not None


def test_a_types_policy_overrides_the_settings_defaults(store: TaskStore) -> None:
    assert store.type_policy(SPEC) == {"task_type": SPEC, "max_running": None, "retry_delay_seconds": BASE,
                                       "retry_max_delay_seconds": 60, "breaker_failures": 3}
    _set_policy(store, SPEC, retry_delay_seconds=600, breaker_failures=None, max_running=2)
    assert store.type_policy(SPEC) == {"task_type": SPEC, "max_running": 2, "retry_delay_seconds": 600,
                                       "retry_max_delay_seconds": 60, "breaker_failures": 3}
    task = store.create(direction="slow to heal", task_type=SPEC)
    before = utcnow()
    back = _fail(store, task["id"], exit_code=1, error_category="push_failed")
    # the type's base (600 s) capped by the default largest delay (60 s), then the jitter's half to whole
    assert before + timedelta(seconds=30) <= back["not_before"] <= utcnow() + timedelta(seconds=60)


def test_the_breaker_pauses_a_type_after_its_failures_in_a_row(store: TaskStore) -> None:
    store.type_defaults = TypeDefaults(retry_delay_seconds=3600, breaker_failures=3)
    failing = [store.create(direction=f"provider down {i}", task_type=SPEC) for i in range(4)]
    other = store.create(direction="another type", task_type=RUN, command="true")
    _fail(store, failing[0]["id"], exit_code=1)  # no category: not retried, but a failure all the same
    ok = store.claim("r")  # a success of the type ends the count...
    assert ok["id"] == failing[1]["id"]
    store.finish(ok["id"], ok["claim_token"], status="completed")
    for task in failing[2:]:  # ...so two failures are not yet three in a row
        _fail(store, task["id"], exit_code=1, error_category="nonzero_exit", error_summary="provider said 503")
    assert store.pauses() == []
    run = store.claim("r", types=[RUN])
    store.finish(run["id"], run["claim_token"], status="completed")  # another type's success counts for nothing
    third = store.create(direction="provider down again", task_type=SPEC)
    last = _fail(store, third["id"], exit_code=1, error_category="nonzero_exit", error_summary="provider said 503")
    (pause,) = store.pauses()
    assert pause["scope"] == SPEC and pause["by"] == BREAKER
    assert f"3 failed runs of spec in a row (the last: task {last['id']}, nonzero_exit: provider said 503)" \
        in pause["reason"]
    assert store.get(other["id"])["status"] == TaskStatus.COMPLETED
    store.resume(SPEC, "cli:alice")  # an operator's act: the count starts again from nothing
    fourth = store.create(direction="once more", task_type=SPEC)
    _fail(store, fourth["id"], exit_code=1)
    assert store.pauses() == []


def test_a_breaker_of_zero_never_pauses(store: TaskStore) -> None:
    _set_policy(store, RUN, breaker_failures=0)
    store.type_defaults = TypeDefaults(retry_delay_seconds=3600, breaker_failures=1)
    for i in range(3):
        task = store.create(direction=f"fails {i}", task_type=RUN, command="false")
        _fail(store, task["id"], exit_code=1)
    assert store.pauses() == []


def test_failures_finishing_at_once_count_each_and_pause_once(store: TaskStore) -> None:
    """Several runners failing the same type at the same moment (the first failure of the type among them): every
    failure counts, none is refused, and the type is paused once."""
    store.type_defaults = TypeDefaults(retry_delay_seconds=3600, breaker_failures=4)
    for i in range(8):
        store.create(direction=f"fails {i}", task_type=SPEC)
    claimed = store.claim_many("r", 8)
    start = threading.Barrier(len(claimed))
    errors: list[BaseException] = []

    def fail(task: dict) -> None:
        start.wait()
        try:
            store.finish(task["id"], task["claim_token"], status="failed", exit_code=1, error_category="timeout")
        except BaseException as exc:  # said below
            errors.append(exc)

    threads = [threading.Thread(target=fail, args=(task,)) for task in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert [t["status"] for t in store.list(task_type=SPEC)[0]] == [TaskStatus.PENDING] * 8
    (pause,) = store.pauses()
    assert pause["scope"] == SPEC and pause["by"] == BREAKER
