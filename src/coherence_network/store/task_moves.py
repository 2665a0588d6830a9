"""Task moves: heartbeat, finish (and with the next claim), decide, retry and the lease reaper, each one short
transaction (a create is in store/task_creates.py, a claim in store/task_claims.py).

State changes are single conditional UPDATEs (``WHERE status = ...``), so two writers can never both win; when the
UPDATE matches nothing the row is read to say why (404 or a conflict naming the current status). Only the moves in
contract.LEGAL_MOVES are made.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.contract import (
    ENDED_BADLY,
    FINISH_STATUSES,
    LEGAL_MOVES,
    SETTLED_STATUSES,
    ErrorCategory,
    TaskStatus,
)
from coherence_network.store.costs import record_spend_in
from coherence_network.store.errors import Conflict, NotFound
from coherence_network.store.failures import FailureBook
from coherence_network.store.run_endings import AgentRun, Ending
from coherence_network.store.schema import UTCDateTime, tasks
from coherence_network.store.statements import (
    FREES_SLOT,
    PENDING,
    RUNNING,
    ReapResult,
    durations,
    row_dict,
    update_statement,
)
from coherence_network.store.task_claims import ClaimAsk, TaskClaims
from coherence_network.store.task_creates import TaskCreates


class TaskMoves(TaskCreates, FailureBook, TaskClaims):
    """Writes to the tasks table, each a legal move (contract.LEGAL_MOVES)."""

    # --- writes ---------------------------------------------------------------------------------------------
    def heartbeat(
        self,
        task_id: int,
        claim_token: int,
        *,
        progress_pct: float | None = None,
        current_step: str | None = None,
        lease_seconds: float | None = None,
        silent_seconds: float | None = None,
        cost_usd: float | None = None,
    ) -> dict[str, Any]:
        """Extend the lease of a running task (and record progress, when it last printed: ``silent_seconds`` ago,
        and what its run reported costing so far, which the day cap counts); only the current claim may do so."""
        with self.single_statement() as conn:  # one UPDATE (a refused one reads why)
            now = self._lease_clock(conn)
            values: dict[str, Any] = {
                "lease_expires_at": now + timedelta(seconds=lease_seconds or self.lease_seconds),
                "updated_at": now,
            }
            if progress_pct is not None:
                values["progress_pct"] = progress_pct
            if current_step is not None:
                values["current_step"] = current_step
            if silent_seconds is not None:
                values["last_output_at"] = now - timedelta(seconds=silent_seconds)
            if cost_usd is not None:
                values["running_cost_usd"] = cost_usd
            return self._update_in(conn, task_id, TaskStatus.RUNNING, values, "heartbeat", claim_token)

    def finish(
        self,
        task_id: int,
        claim_token: int,
        *,
        status: str,
        output: str | None = None,
        exit_code: int | None = None,
        decision_prompt: str | None = None,
        error_category: str | None = None,
        error_summary: str | None = None,
        usage: AgentRun | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """End the current claim: completed, failed (why: ``error_category``, ``error_summary``), needs_decision
        (with a question), pending (released) or cancelled (after an operator's cancel request).

        A failure counts as an attempt; a question or a release does not. Finishing again with the same claim
        token and status (a retry after a lost response) returns the stored result."""
        status = self._finish_status(status, decision_prompt)
        ending = Ending(status, output, exit_code, decision_prompt, error_category, error_summary, usage, evidence)
        with self.single_statement() if ending.alone() else self.transaction() as conn:
            return self._finish_in(conn, utcnow(), task_id, claim_token, ending)

    def finish_and_claim(
        self,
        task_id: int,
        claim_token: int,
        *,
        status: str,
        output: str | None = None,
        exit_code: int | None = None,
        decision_prompt: str | None = None,
        error_category: str | None = None,
        error_summary: str | None = None,
        usage: AgentRun | None = None,
        evidence: dict[str, Any] | None = None,
        runner_id: str,
        types: Iterable[str] | None = None,
        lease_seconds: float | None = None,
        request_id: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``finish`` and then ``claim`` for the runner in one call: (finished task, next task or None).

        A finish that is refused (stale claim token, wrong status) claims nothing. Both halves are safe to retry:
        the finish by its claim token, the claim by its request id. So on PostgreSQL a finish that is one statement
        and the claim of the next task each commit by themselves (two round trips instead of BEGIN, two UPDATEs and
        COMMIT): a failure between them leaves the task finished, and the runner's retry finishes nothing twice."""
        status = self._finish_status(status, decision_prompt)
        ending = Ending(status, output, exit_code, decision_prompt, error_category, error_summary, usage, evidence)
        ask = ClaimAsk.of(runner_id, 1, types, lease_seconds, request_id)
        if self._pg and ending.alone():
            tried = self._may_claim_alone(ask)
            with self.single_statement() as conn:  # one pooled connection, each statement committing by itself
                finished = self._finish_in(conn, utcnow(), task_id, claim_token, ending)
                alone = self._claim_one_alone_in(conn, ask) if tried else None
            claimed = alone if alone is not None else self._claim_locked(ask, tried_alone=tried)
            return finished, (claimed[0] if claimed else None)
        with self.transaction() as conn:
            now = self._lease_clock(conn)  # one moment: the next run starts when this one finished
            finished = self._finish_in(conn, now, task_id, claim_token, ending)
            claimed = self._claim_in(conn, now, ask)
        return finished, (claimed[0] if claimed else None)

    @staticmethod
    def _finish_status(status: str, decision_prompt: str | None) -> TaskStatus:
        status = TaskStatus(status)
        if status not in FINISH_STATUSES:
            raise ValueError(f"status must be one of {', '.join(s.value for s in FINISH_STATUSES)}")
        if status is TaskStatus.NEEDS_DECISION and not decision_prompt:
            raise ValueError("needs_decision requires decision_prompt")
        return status

    def _finish_in(
        self,
        conn: sa.Connection,
        now: datetime,
        task_id: int,
        claim_token: int,
        ending: Ending,
    ) -> dict[str, Any]:
        status = ending.status
        values: dict[str, Any] = {"status": status.value, "lease_expires_at": None, "updated_at": now,
                                  "running_cost_usd": None}  # the run's cost is in the ledger now (store/costs.py)
        if ending.output is not None:
            values["output"] = self._tail(ending.output)
        if ending.exit_code is not None:
            values["exit_code"] = ending.exit_code
        bad = status in ENDED_BADLY
        values["error_category"] = str(ending.error_category) if bad and ending.error_category else None
        values["error_summary"] = ending.error_summary if bad else None
        if ending.usage is not None:
            values.update({k: v for k, v in ending.usage.values().items() if v is not None})
        if ending.evidence is not None:
            values["evidence"] = ending.evidence
        if status in SETTLED_STATUSES:
            values["finished_at"] = now
        if status is TaskStatus.NEEDS_DECISION:
            values.update(decision_prompt=ending.decision_prompt, decision=None, decided_by=None, decided_at=None)
        if status is TaskStatus.PENDING:
            values["claimed_by"] = None
        if status is TaskStatus.FAILED:  # back to pending after a backoff when it may heal (store/failures.py)
            values = self._failed_finish_in(conn, now, task_id, claim_token, values)
        try:
            task = self._update_in(conn, task_id, TaskStatus.RUNNING, values, "finish", claim_token,
                                   count_attempt=status is TaskStatus.FAILED)
        except Conflict:
            stored = row_dict(conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first())
            if stored is not None and stored["claim_token"] == claim_token and (
                    stored["status"] == status.value or self._retried_by(stored, values)):
                return stored  # this very finish was already recorded
            raise
        self._count_run_in(conn, now, task, status)  # the circuit breaker
        if ending.usage is not None:
            record_spend_in(conn, now, task, ending.usage.agent, ending.usage.usage)
        return task

    def decide(self, task_id: int, decision: str, decided_by: str) -> dict[str, Any]:
        """Store a decision on a needs_decision task and return it to pending, so the next run sees it; the
        decider (e.g. telegram:alice) is the actor in the audit trail.

        The same decision by the same person again (a retry after a lost response) returns the task as it is."""
        now = utcnow()
        values = {
            "status": PENDING,
            "decision": decision,
            "decided_by": decided_by,
            "decided_at": now,
            "claimed_by": None,
            "updated_at": now,
        }
        try:
            with self.transaction() as conn:
                task = self._update_in(conn, task_id, TaskStatus.NEEDS_DECISION, values, "decide")
                self._audit_in(conn, decided_by, "decide", task_id=task_id, before=TaskStatus.NEEDS_DECISION.value,
                               after=PENDING, detail={"decision": decision[:500]})
                return task
        except Conflict:
            stored = self.get(task_id)
            if stored["decision"] == decision and stored["decided_by"] == decided_by:
                return stored
            raise

    def retry(self, task_id: int, *, actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
        """Operator retry of a failed or cancelled task: back to pending with a fresh set of attempts and no cancel
        (in the audit trail when ``actor`` is given)."""
        now = utcnow()
        values: dict[str, Any] = {
            "status": PENDING,
            "attempts": 0,
            "claimed_by": None,
            "finished_at": None,
            "run_seconds": None,
            "queue_seconds": None,
            "exit_code": None,
            "cancel_requested_at": None,
            "cancelled_by": None,
            "cancel_reason": None,
            "not_before": None,
            "updated_at": now,
        }
        with self.transaction() as conn:
            current = conn.execute(sa.select(tasks.c.status).where(tasks.c.id == task_id)).scalar()
            settled = TaskStatus.CANCELLED if current == TaskStatus.CANCELLED.value else TaskStatus.FAILED
            task = self._update_in(conn, task_id, settled, values, "retry")
            if actor is not None:
                self._audit_in(conn, actor, "retry", task_id=task_id, reason=reason, before=settled.value,
                               after=PENDING)
            return task

    def reap(self, now: datetime | None = None, *, max_lock_wait: float | None = None) -> ReapResult:
        """Fail the runs whose lease expired before ``now`` (default: the store's clock) with ``lease_expired``: an
        attempt; the task returns to pending after its backoff, or stays failed once attempts are spent
        (store/failures.py). A pass that waited longer than
        ``max_lock_wait`` for the store's write lock requeues nothing (``waited`` says how long): the heartbeats
        that would have renewed those leases waited behind the same lock, and land once it is free."""
        with self.transaction() as conn:
            asked = time.monotonic()
            locked_at = self._lease_clock(conn)
            waited = time.monotonic() - asked
            if max_lock_wait is not None and waited > max_lock_wait:
                return ReapResult(waited=waited)
            now = now or locked_at
            expired = sa.and_(tasks.c.status == RUNNING, tasks.c.lease_expires_at < now)
            cancelled = self._reap_cancelled_in(conn, now, expired)  # its runner died after a cancel request
            # the others fail as lease_expired (store/failures.py); the cancelled ones are no longer running
            reclaimed, failed = self._expire_leases_in(conn, now, locked_at)
            if reclaimed or failed or cancelled:  # a run's slot is free, should its type be limited
                self._wake(conn)
        return ReapResult(reclaimed=reclaimed, failed=failed, cancelled=cancelled)

    def _reap_cancelled_in(self, conn: sa.Connection, now: datetime, expired: sa.ColumnElement[bool]) -> int:
        """Settle as cancelled the expired runs whose cancel was requested (store/cancels.py): never back to
        pending, and no attempt counted."""
        return int(conn.execute(
            tasks.update()
            .where(expired, tasks.c.cancel_requested_at.is_not(None))
            .values(status=TaskStatus.CANCELLED.value, finished_at=now, lease_expires_at=None, claimed_by=None,
                    updated_at=now, error_category=ErrorCategory.CANCELLED.value,
                    error_summary="cancel requested; the runner went silent before it stopped the task",
                    current_step="lease expired after a cancel request",
                    **durations(self._pg, sa.literal(now, UTCDateTime)))
        ).rowcount)

    # --- helpers --------------------------------------------------------------------------------------------
    def _tail(self, output: str) -> str:
        encoded = output.encode("utf-8", errors="replace")
        if len(encoded) <= self.tail_bytes:
            return output
        return encoded[-self.tail_bytes :].decode("utf-8", errors="ignore")

    def _conditional_update(
        self,
        task_id: int,
        needed: TaskStatus,
        values: dict[str, Any],
        action: str,
        claim_token: int | None = None,
    ) -> dict[str, Any]:
        """``_update_in`` in a transaction of its own."""
        with self.transaction() as conn:
            return self._update_in(conn, task_id, needed, values, action, claim_token)

    def _update_in(
        self,
        conn: sa.Connection,
        task_id: int,
        needed: TaskStatus,
        values: dict[str, Any],
        action: str,
        claim_token: int | None = None,
        *,
        count_attempt: bool = False,
    ) -> dict[str, Any]:
        """One UPDATE that applies only in status ``needed`` (and the current claim); the move must be legal.
        When it matches nothing, the row is read in the same transaction to say why (NotFound or Conflict)."""
        new = values.get("status")
        if new is not None and (needed, TaskStatus(new)) not in LEGAL_MOVES:
            raise ValueError(f"{needed.value} -> {new} is not a legal move")
        keys = tuple(sorted(values))
        statement = update_statement(needed.value, claim_token is not None, keys, count_attempt, self._pg)
        params = {"b_id": task_id, "b_token": claim_token, **{f"v_{k}": values[k] for k in keys}}
        row = conn.execute(statement, params).first()
        if row is not None:
            task = dict(row._mapping)
            if task.pop(FREES_SLOT, False) or new == PENDING:  # a freed slot of a limited type: its waiters look
                self._wake(conn)
            elif new is not None:
                self.tasks_changed(conn)
            return task
        current = conn.execute(sa.select(tasks.c.status, tasks.c.claim_token).where(tasks.c.id == task_id)).first()
        if current is None:
            raise NotFound(f"task {task_id} not found")
        status, token = current
        if claim_token is not None and status == RUNNING and token != claim_token:
            raise Conflict(
                f"cannot {action} task {task_id}: claim token {claim_token} is stale (current claim {token}); "
                "the lease expired and the task was claimed again",
                status,
            )
        raise Conflict(
            f"cannot {action} task {task_id}: its status is {status}, {action} needs {needed.value}", status
        )
