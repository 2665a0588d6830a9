"""The task's moves as a state machine, on both stores: random sequences of create, claim, heartbeat, finish (each
status), finish-and-claim, decide, retry, cancel and lease expiry, checked against a model built from
contract.LEGAL_MOVES. A retriable failure (a finish's nonzero_exit, a lease expiry) with attempts left goes back to
pending in its backoff, which outlasts the test: such a task is pending but not claimable; any other failure stays
failed.

After every step each task's stored status is the model's, every change of status was a legal move, and a move the
table does not allow raised Conflict naming the current status (a repeated finish or decision, which the store
answers with what it recorded, excepted: a retry after a lost response must be safe)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from coherence_network.clock import utcnow
from coherence_network.contract import FINISH_STATUSES, LEGAL_MOVES, TaskStatus, TaskType
from coherence_network.store import Conflict, TaskStore
from coherence_network.store.failures import TypeDefaults
from coherence_network.store.schema import tasks

LEASE = 30.0
PENDING, RUNNING, FAILED = TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.FAILED
NEEDS_DECISION, COMPLETED = TaskStatus.NEEDS_DECISION, TaskStatus.COMPLETED
CANCELLED = TaskStatus.CANCELLED


@dataclass
class Model:
    """What the table of legal moves says one task is."""

    status: TaskStatus
    priority: int
    max_attempts: int
    attempts: int = 0
    token: int = 0  # the current claim token (0: never claimed)
    decision: str | None = None
    cancel_asked: bool = False  # a cancel was requested while it ran (until a retry)
    waiting: bool = False  # pending in an automatic retry's backoff: not claimable
    retried: str | None = None  # the category of the failed finish (this token) that sent it back to pending


class TaskMoves(RuleBasedStateMachine):
    def __init__(self, store: TaskStore) -> None:
        super().__init__()
        self.store = store
        self.model: dict[int, Model] = {}

    def teardown(self) -> None:
        """The next run starts from an empty queue: its claims must pick only its own tasks."""
        with self.store.transaction() as conn:
            conn.execute(tasks.delete().where(tasks.c.id.in_(list(self.model))))

    # --- helpers ------------------------------------------------------------------------------------------------
    def moved(self, task_id: int, new: TaskStatus) -> None:
        """Record a move in the model, which must be in the table."""
        model = self.model[task_id]
        assert model.status == new or (model.status, new) in LEGAL_MOVES, f"{model.status} -> {new} is not legal"
        model.status, model.waiting, model.retried = new, False, None

    def pick(self, data: st.DataObject, wanted: TaskStatus) -> int:
        """A task, most often one in ``wanted`` (the status the move needs), else any: legal and illegal moves both."""
        fitting = sorted(i for i, m in self.model.items() if m.status is wanted)
        focused = bool(fitting) and data.draw(st.integers(0, 3), label="focused") > 0
        return data.draw(st.sampled_from(fitting if focused else sorted(self.model)), label="task")

    def refused(self, task_id: int, exc: Conflict) -> None:
        assert exc.current_status == self.model[task_id].status.value

    def claimed(self, task: dict[str, Any] | None) -> None:
        pending = [(-m.priority, i) for i, m in self.model.items() if m.status is PENDING and not m.waiting]
        if not pending:
            assert task is None
            return
        assert task is not None and task["id"] == min(pending)[1], "the most urgent, then the oldest, is claimed"
        model = self.model[task["id"]]
        assert task["claim_token"] > model.token
        self.moved(task["id"], RUNNING)
        model.token = task["claim_token"]

    def finish_model(self, task_id: int, token: int, status: TaskStatus, category: str | None) -> TaskStatus | None:
        """Apply a finish to the model; the status it ends in, None when the store must refuse it. A run whose
        cancel was requested ends cancelled unless it completed; one whose cancel was not may not end cancelled."""
        model = self.model[task_id]
        if status is not COMPLETED and model.cancel_asked and token == model.token:
            status = CANCELLED
        replayed = model.status is status or (status is FAILED and category is not None and model.retried == category)
        if replayed and model.token == token:
            return model.status  # the store takes it for a replay (this token, this outcome): as stored, no move
        if model.status is not RUNNING or token != model.token or (status is CANCELLED and not model.cancel_asked):
            return None
        if status is FAILED:
            self.failed(task_id, retriable=category == "nonzero_exit")
            model.retried = category if model.waiting else None
            return model.status
        self.moved(task_id, status)
        if status is NEEDS_DECISION:
            model.decision = None
        return status

    def failed(self, task_id: int, *, retriable: bool) -> None:
        """A failed run: one attempt more, then pending in its backoff when it may heal and attempts are left, else
        failed."""
        model = self.model[task_id]
        model.attempts += 1
        settles = not retriable or model.attempts >= model.max_attempts
        self.moved(task_id, FAILED if settles else PENDING)
        model.waiting = not settles

    # --- rules --------------------------------------------------------------------------------------------------
    @rule(priority=st.integers(0, 2), max_attempts=st.integers(1, 3))
    def create(self, priority: int, max_attempts: int) -> None:
        task = self.store.create(direction="move me", task_type=TaskType.RUN, command="true", priority=priority,
                                 max_attempts=max_attempts)
        assert task["status"] == PENDING
        self.model[task["id"]] = Model(PENDING, priority, max_attempts)

    @rule()
    def claim(self) -> None:
        self.claimed(self.store.claim("runner", lease_seconds=LEASE))

    @precondition(lambda self: self.model)
    @rule(data=st.data(), stale=st.booleans())
    def heartbeat(self, data: st.DataObject, stale: bool) -> None:
        task_id = self.pick(data, RUNNING)
        model = self.model[task_id]
        token = model.token - 1 if stale else model.token
        try:
            self.store.heartbeat(task_id, token, progress_pct=50.0, lease_seconds=LEASE)
        except Conflict as exc:
            assert model.status is not RUNNING or stale
            self.refused(task_id, exc)
        else:
            assert model.status is RUNNING and not stale

    @precondition(lambda self: self.model)
    @rule(data=st.data(), status=st.sampled_from(FINISH_STATUSES), stale=st.booleans(), then_claim=st.booleans(),
          category=st.sampled_from([None, "nonzero_exit", "config_error"]))
    def finish(self, data: st.DataObject, status: TaskStatus, stale: bool, then_claim: bool,
               category: str | None) -> None:
        task_id = self.pick(data, RUNNING)
        model = self.model[task_id]
        token = model.token - 1 if stale else model.token
        fields: dict[str, Any] = {"status": status.value, "output": "out", "exit_code": 0 if status is COMPLETED else 1,
                                  "decision_prompt": "which?" if status is NEEDS_DECISION else None,
                                  "error_category": category}
        try:
            if then_claim:
                done, nxt = self.store.finish_and_claim(task_id, token, runner_id="runner", lease_seconds=LEASE,
                                                        **fields)
            else:
                done, nxt = self.store.finish(task_id, token, **fields), None
        except Conflict as exc:
            assert self.finish_model(task_id, token, status, category) is None, "a legal finish was refused"
            self.refused(task_id, exc)
            return
        ended = self.finish_model(task_id, token, status, category)
        assert ended is not None, f"finish {model.status} -> {status} was allowed"
        assert done["status"] == ended
        if then_claim:
            self.claimed(nxt)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), decision=st.sampled_from(["yes", "no"]))
    def decide(self, data: st.DataObject, decision: str) -> None:
        task_id = self.pick(data, NEEDS_DECISION)
        model = self.model[task_id]
        try:
            task = self.store.decide(task_id, decision, "operator")
        except Conflict as exc:
            assert model.status is not NEEDS_DECISION and model.decision != decision
            self.refused(task_id, exc)
            return
        if model.status is NEEDS_DECISION:
            self.moved(task_id, PENDING)
            model.decision = decision
        else:
            assert model.decision == decision  # the same decision again: a replay
        assert task["decision"] == decision

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        task_id = self.pick(data, FAILED if data.draw(st.booleans(), label="failed") else CANCELLED)
        model = self.model[task_id]
        try:
            self.store.retry(task_id)
        except Conflict as exc:
            assert model.status not in (FAILED, CANCELLED)
            self.refused(task_id, exc)
            return
        self.moved(task_id, PENDING)
        model.attempts, model.cancel_asked = 0, False

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task_id = self.pick(data, RUNNING if data.draw(st.booleans(), label="running") else PENDING)
        model = self.model[task_id]
        try:
            task = self.store.cancel(task_id, "cli:operator", "test")
        except Conflict as exc:
            assert model.status in (COMPLETED, FAILED)
            self.refused(task_id, exc)
            return
        if model.status is RUNNING:
            model.cancel_asked = True
        elif model.status is not CANCELLED:
            self.moved(task_id, CANCELLED)
        assert task["status"] == model.status

    @rule()
    def leases_expire(self) -> None:
        result = self.store.reap(utcnow() + timedelta(seconds=LEASE + 5))
        failed = reclaimed = cancelled = 0
        for task_id, model in self.model.items():
            if model.status is RUNNING and model.cancel_asked:
                cancelled += 1
                self.moved(task_id, CANCELLED)
            elif model.status is RUNNING:
                self.failed(task_id, retriable=True)  # lease_expired
                failed, reclaimed = failed + (not model.waiting), reclaimed + model.waiting
        assert (result.failed, result.reclaimed, result.cancelled) == (failed, reclaimed, cancelled)

    @invariant()
    def the_store_agrees(self) -> None:
        if not self.model:
            return
        with self.store.connection() as conn:
            rows = conn.execute(sa.select(tasks.c.id, tasks.c.status, tasks.c.attempts)
                                .where(tasks.c.id.in_(list(self.model)))).all()
        stored = {row.id: (row.status, row.attempts) for row in rows}
        assert stored == {i: (m.status.value, m.attempts) for i, m in self.model.items()}


def test_task_moves_follow_the_table(store: TaskStore) -> None:
    # backoffs longer than the test; no circuit breaker (every task is a run task: it would pause them all)
    store.type_defaults = TypeDefaults(retry_delay_seconds=3600, breaker_failures=0)
    run_state_machine_as_test(lambda: TaskMoves(store), settings=settings(
        max_examples=20, stateful_step_count=30, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))
