"""Cancel (issue 21 item 1) on both stores: pending and waiting tasks settle at once, a running one is marked for its
runner, a settled one is a conflict naming its status, a repeat is safe, and each cancel is one audit record."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from coherence_network.clock import utcnow
from coherence_network.store import TaskStore
from coherence_network.store.errors import Conflict, NotFound
from coherence_network.store.schema import audit


def audit_rows(engine: Engine, task_id: int) -> list[dict[str, Any]]:
    """The audit trail of one task, oldest first (read from the store: GET /api/audit is another part's)."""
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            sa.select(audit).where(audit.c.task_id == task_id).order_by(audit.c.id))]


def test_a_pending_task_is_cancelled_at_once_once(store: TaskStore, store_engine: Engine) -> None:
    task = store.create(direction="never mind", task_type="spec")
    cancelled = store.cancel(task["id"], "cli:alice", "wrong direction")
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert (cancelled["cancelled_by"], cancelled["cancel_reason"]) == ("cli:alice", "wrong direction")
    assert cancelled["error_category"] == "cancelled"
    assert cancelled["error_summary"] == "cancelled by cli:alice: wrong direction"
    assert cancelled["cancel_requested_at"] is None
    again = store.cancel(task["id"], "cli:bob", "me too")
    assert (again["status"], again["cancelled_by"]) == ("cancelled", "cli:alice")
    assert store.claim("r1") is None
    [record] = audit_rows(store_engine, task["id"])
    assert (record["actor"], record["channel"], record["action"], record["reason"]) == (
        "cli:alice", "cli", "cancel", "wrong direction")
    assert (record["status_before"], record["status_after"]) == ("pending", "cancelled")


def test_a_waiting_task_is_cancelled_and_a_decision_then_conflicts(store: TaskStore, store_engine: Engine) -> None:
    store.create(direction="asks", task_type="impl")
    claimed = store.claim("r1")
    store.finish(claimed["id"], claimed["claim_token"], status="needs_decision", decision_prompt="go on?")
    cancelled = store.cancel(claimed["id"], "telegram:bob", "no longer needed")
    assert (cancelled["status"], cancelled["claimed_by"]) == ("cancelled", None)
    with pytest.raises(Conflict, match="its status is cancelled"):
        store.decide(claimed["id"], "yes", "console:ops")
    assert [r["status_before"] for r in audit_rows(store_engine, claimed["id"])] == ["needs_decision"]


def test_a_running_task_is_marked_and_settles_when_its_runner_finishes(store: TaskStore, store_engine: Engine) -> None:
    store.create(direction="sleep 300", task_type="run", command="sleep 300")
    claimed = store.claim("r1")
    token = claimed["claim_token"]
    with pytest.raises(Conflict, match="no cancel was requested"):
        store.finish(claimed["id"], token, status="cancelled")
    asked = store.cancel(claimed["id"], "console:ops", "runaway")
    assert asked["status"] == "running" and asked["cancel_requested_at"] is not None
    assert store.heartbeat(claimed["id"], token)["cancel_requested_at"] == asked["cancel_requested_at"]
    assert store.cancel(claimed["id"], "cli:other", "again")["cancelled_by"] == "console:ops"
    done = store.finish(claimed["id"], token, status="cancelled", output="partial\n", exit_code=-15)
    assert (done["status"], done["output"], done["error_category"]) == ("cancelled", "partial\n", "cancelled")
    assert done["error_summary"] == "cancelled by console:ops: runaway" and done["attempts"] == 0
    assert store.finish(claimed["id"], token, status="cancelled")["status"] == "cancelled"  # a lost answer, retried
    [record] = audit_rows(store_engine, claimed["id"])
    assert (record["status_before"], record["status_after"], record["actor"]) == ("running", "running", "console:ops")


def test_a_release_after_a_cancel_request_settles_it(store: TaskStore) -> None:
    store.create(direction="runs", task_type="run", command="true")
    claimed = store.claim("r1")
    store.cancel(claimed["id"], "api", "stop")
    released = store.finish(claimed["id"], claimed["claim_token"], status="pending")
    assert released["status"] == "cancelled" and store.claim("r2") is None


def test_settled_tasks_conflict_naming_their_status_and_unknown_ones_are_not_found(store: TaskStore) -> None:
    store.create(direction="done", task_type="run", command="true")
    claimed = store.claim("r1")
    store.finish(claimed["id"], claimed["claim_token"], status="completed")
    with pytest.raises(Conflict, match="its status is completed") as caught:
        store.cancel(claimed["id"], "cli:alice", "too late")
    assert caught.value.current_status == "completed"
    with pytest.raises(NotFound):
        store.cancel(999_999, "cli:alice", "nothing")


def test_retry_brings_a_cancelled_task_back_without_its_cancel(store: TaskStore, store_engine: Engine) -> None:
    task = store.create(direction="again", task_type="spec")
    store.cancel(task["id"], "cli:alice", "later")
    back = store.retry(task["id"], actor="cli:alice", reason="now")
    assert back["status"] == "pending"
    assert (back["cancelled_by"], back["cancel_reason"], back["cancel_requested_at"]) == (None, None, None)
    assert store.claim("r1")["id"] == task["id"]
    assert [(r["action"], r["status_before"]) for r in audit_rows(store_engine, task["id"])] == [
        ("cancel", "pending"), ("retry", "cancelled")]


def test_a_dead_runners_cancelled_task_is_reaped_as_cancelled_not_requeued(store: TaskStore) -> None:
    store.create(direction="asked", task_type="run", command="sleep 300")
    store.create(direction="plain", task_type="run", command="sleep 300")
    asked, plain = store.claim_many("r1", 2)
    store.cancel(asked["id"], "cli:alice", "stop it")
    result = store.reap(utcnow() + timedelta(seconds=store.lease_seconds + 1))
    assert (result.cancelled, result.reclaimed) == (1, 1)
    reaped = store.get(asked["id"])
    assert (reaped["status"], reaped["error_category"], reaped["attempts"]) == ("cancelled", "cancelled", 0)
    assert store.get(plain["id"])["status"] == "pending"
