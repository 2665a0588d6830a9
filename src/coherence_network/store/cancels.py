"""Cancel: an operator stops a task. A pending or waiting task settles as cancelled at once; a running one is
marked (``cancel_requested_at``) and its runner, told by its next lease renewal, stops the process group and
finishes the run as cancelled. Each cancel is one audit record in its own transaction; a repeat changes nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.contract import ErrorCategory, TaskStatus
from coherence_network.store.errors import Conflict, NotFound
from coherence_network.store.run_endings import Ending
from coherence_network.store.schema import tasks
from coherence_network.store.task_moves import TaskMoves

CANCELLABLE = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.NEEDS_DECISION)
SUMMARY_CHARS = 300
_RACES = 3  # a task that moves between the read and the UPDATE (claimed, finished) is read again, this often

_ASKED = sa.select(tasks.c.status, tasks.c.claim_token, tasks.c.cancel_requested_at, tasks.c.cancelled_by,
                   tasks.c.cancel_reason).where(tasks.c.id == sa.bindparam("b_id"))


def cancel_summary(by: str | None, reason: str | None) -> str:
    """The one line a cancelled task shows as its error summary."""
    line = " ".join(f"cancelled by {by or 'an operator'}: {reason or ''}".split())
    return line[:SUMMARY_CHARS]


class CancelBook(TaskMoves):
    """Cancels, and the finish of a run whose cancel was requested."""

    def cancel(self, task_id: int, actor: str, reason: str) -> dict[str, Any]:
        """Cancel task ``task_id`` for ``actor`` (e.g. cli:alice) because of ``reason``; the task as it is now.

        Pending or needs_decision: cancelled at once. Running: the cancel is requested and the task stays running
        until its runner stops it. Completed or failed: Conflict naming the status. A task already cancelled, or
        whose cancel is already requested, is returned as it is (no second audit record)."""
        with self.transaction() as conn:
            for _ in range(_RACES):
                row = conn.execute(_ASKED, {"b_id": task_id}).first()
                if row is None:
                    raise NotFound(f"task {task_id} not found")
                status = TaskStatus(row.status)
                if status is TaskStatus.CANCELLED or (status is TaskStatus.RUNNING and row.cancel_requested_at):
                    return self._row_in(conn, task_id)
                if status not in CANCELLABLE:
                    raise Conflict(f"cannot cancel task {task_id}: its status is {status.value}; only pending, "
                                   "running or needs_decision tasks can be cancelled (retry brings it back)",
                                   status.value)
                try:
                    task = self._update_in(conn, task_id, status, self._cancel_values(status, actor, reason),
                                           "cancel")
                except Conflict:  # it moved meanwhile (claimed, finished, decided): look again
                    continue
                self._audit_in(conn, actor, "cancel", task_id=task_id, reason=reason, before=status.value,
                               after=task["status"])
                return task
        raise Conflict(f"cannot cancel task {task_id}: it keeps changing status; try again", None)

    @staticmethod
    def _cancel_values(status: TaskStatus, actor: str, reason: str) -> dict[str, Any]:
        now: datetime = utcnow()
        values: dict[str, Any] = {"cancelled_by": actor, "cancel_reason": reason, "updated_at": now}
        if status is TaskStatus.RUNNING:
            values["cancel_requested_at"] = now
            return values
        values.update(status=TaskStatus.CANCELLED.value, finished_at=now, lease_expires_at=None, claimed_by=None,
                      not_before=None, run_seconds=None, queue_seconds=None,
                      error_category=ErrorCategory.CANCELLED.value, error_summary=cancel_summary(actor, reason))
        return values

    def _row_in(self, conn: sa.Connection, task_id: int) -> dict[str, Any]:
        row = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first()
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return dict(row._mapping)

    def _finish_in(self, conn: sa.Connection, now: datetime, task_id: int, claim_token: int,
                   ending: Ending) -> dict[str, Any]:
        """A finish as cancelled needs a cancel request (else Conflict). A run whose cancel was requested ends
        cancelled unless it completed: a release, a question or a failure that crossed the request must not hand
        the task out again (a release by a stopping runner, an automatic retry, a decision)."""
        if ending.status is not TaskStatus.COMPLETED:
            row = conn.execute(_ASKED, {"b_id": task_id}).first()
            if row is None or row.claim_token != claim_token:  # the usual refusal (404, stale claim) follows
                return super()._finish_in(conn, now, task_id, claim_token, ending)
            if row.cancel_requested_at is not None:
                ending = replace(ending, status=TaskStatus.CANCELLED, error_category=ErrorCategory.CANCELLED,
                                 error_summary=cancel_summary(row.cancelled_by, row.cancel_reason))
            elif row.status == TaskStatus.RUNNING.value and ending.status is TaskStatus.CANCELLED:
                raise Conflict(f"cannot finish task {task_id} as cancelled: no cancel was requested",
                               TaskStatus.RUNNING.value)
        return super()._finish_in(conn, now, task_id, claim_token, ending)
