"""What a failed run leads to: retries that heal on their own, and the circuit breaker.

A failure (a failed finish, or a lease the reaper finds expired: ``lease_expired``) counts an attempt. When its
category could succeed on a later attempt (contract.RETRIABLE_CATEGORIES) and attempts are left, the task goes back
to pending with ``not_before`` set after an exponential backoff, which the claim waits out; otherwise it stays
failed. Either way its category, summary and output stay on it. Each failure also counts towards its type's
failures in a row (store/streaks.py); the one that reaches the type's ``breaker_failures`` pauses the type, in the
same transaction. The per-type numbers come from ``type_policies``, the settings' defaults where it has none.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from coherence_network.contract import RETRIABLE_CATEGORIES, ErrorCategory, TaskStatus
from coherence_network.contract_steering import BREAKER, POLICY_FIELDS
from coherence_network.store.pauses import PauseBook
from coherence_network.store.schema import UTCDateTime, tasks, type_policies
from coherence_network.store.statements import FAILED, PENDING, RUNNING, update_statement
from coherence_network.store.streaks import failed_again

SUMMARY_CHARS = 300
_POLICY = sa.select(type_policies).where(type_policies.c.task_type == sa.bindparam("b_type"))
_RUN = sa.select(tasks.c.task_type, tasks.c.attempts, tasks.c.max_attempts).where(
    tasks.c.id == sa.bindparam("b_id"), tasks.c.status == RUNNING, tasks.c.claim_token == sa.bindparam("b_token"))
_NOW = sa.bindparam("b_now", type_=UTCDateTime)
_EXPIRED = (sa.select(tasks.c.id, tasks.c.task_type, tasks.c.attempts, tasks.c.max_attempts, tasks.c.claim_token,
                      tasks.c.claimed_by, tasks.c.lease_expires_at)
            .where(tasks.c.status == RUNNING, tasks.c.lease_expires_at < _NOW)
            .order_by(tasks.c.task_type, tasks.c.id)  # one order of locks on the types' counts: no deadlock
            .with_for_update(skip_locked=True))  # PostgreSQL: a row a heartbeat holds is being renewed: not ours
_NEXT_DUE = (sa.select(tasks.c.not_before).where(tasks.c.status == PENDING, tasks.c.not_before > _NOW)
             .order_by(tasks.c.not_before).limit(1))


@dataclass(frozen=True)
class TypeDefaults:
    """The settings' values for what a type's row in ``type_policies`` leaves NULL (or a type without a row)."""

    retry_delay_seconds: float = 30.0  # COHERENCE_RETRY_DELAY_SECONDS
    retry_max_delay_seconds: float = 3600.0  # COHERENCE_RETRY_MAX_DELAY_SECONDS
    breaker_failures: int = 5  # COHERENCE_BREAKER_FAILURES; 0: no breaker
    max_running: int | None = None  # no limit


def backoff_seconds(attempts: int, base: float, cap: float, draw: float) -> float:
    """The wait before attempt ``attempts + 1`` (``attempts`` failed so far, 1 or more): the exponential ceiling
    min(cap, base * 2**(attempts - 1)), scaled by 0.5 + 0.5 * ``draw`` (``draw`` uniform in [0, 1)).

    Equal jitter, not full: half the ceiling is kept, so a retry never comes back almost at once (full jitter may
    draw zero, and a provider that is down would get the failed work again immediately), while the other half
    spreads the retries of tasks that failed together, so they do not all come back in the same second."""
    ceiling = min(cap, base * 2.0 ** min(attempts - 1, 64))
    return ceiling * (0.5 + 0.5 * draw)


class FailureBook(PauseBook):
    """The automatic retry of failed runs, the circuit breaker and the per-type policy both read."""

    type_defaults: TypeDefaults = TypeDefaults()  # set from the settings by open_task_store

    def type_policy(self, task_type: str) -> dict[str, Any]:
        """The type's policy with the settings' defaults applied: max_running, retry_delay_seconds,
        retry_max_delay_seconds, breaker_failures (and task_type)."""
        return self._read(lambda conn: self._policy_in(conn, task_type))

    def _policy_in(self, conn: sa.Connection, task_type: str) -> dict[str, Any]:
        row = conn.execute(_POLICY, {"b_type": task_type}).first()
        stored = dict(row._mapping) if row is not None else {}
        defaults = asdict(self.type_defaults)
        return {"task_type": task_type,
                **{name: defaults[name] if stored.get(name) is None else stored[name] for name in POLICY_FIELDS}}

    def next_due(self, now: datetime, types: Iterable[str] | None = None) -> datetime | None:
        """When the first pending task still in its backoff (of ``types``, if given) becomes claimable; None when
        none waits. One seek on the (status, not_before) index: a waiting claim looks again then."""
        type_list = [str(t) for t in types or []]
        query = _NEXT_DUE.where(tasks.c.task_type.in_(type_list)) if type_list else _NEXT_DUE
        due: datetime | None = self._read(lambda conn: conn.execute(query, {"b_now": now}).scalar())
        return due

    # --- inside the transactions of task_moves ------------------------------------------------------------------
    def _failed_finish_in(self, conn: sa.Connection, now: datetime, task_id: int, claim_token: int,
                          values: dict[str, Any]) -> dict[str, Any]:
        """The values of a failed finish as this failure settles it: back to pending after its backoff when its
        category may heal and attempts are left (values as given, to be refused, when the claim is not current).
        A failure without a category (a runner older than categories) is not retried: nothing says it could heal."""
        run = conn.execute(_RUN, {"b_id": task_id, "b_token": claim_token}).first()
        if run is None:
            return values
        settled = self._settled_in(conn, now, run.task_type, run.attempts + 1, run.max_attempts,
                                   values["error_category"])
        if settled["status"] == PENDING:
            values.pop("finished_at", None)  # not settled: its run's durations are a later run's to record
        return {**values, **settled}

    def _settled_in(self, conn: sa.Connection, now: datetime, task_type: str, attempts: int, max_attempts: int,
                    category: str | None) -> dict[str, Any]:
        """How a failure that makes ``attempts`` settles: failed, or pending until its backoff (from ``now``) ends
        when its category is retriable and attempts are left."""
        if category not in RETRIABLE_CATEGORIES or attempts >= max_attempts:
            return {"status": FAILED}
        policy = self._policy_in(conn, task_type)
        delay = backoff_seconds(attempts, policy["retry_delay_seconds"], policy["retry_max_delay_seconds"],
                                random.random())
        return {"status": PENDING, "claimed_by": None, "not_before": now + timedelta(seconds=delay)}

    @staticmethod
    def _retried_by(stored: dict[str, Any], values: dict[str, Any]) -> bool:
        """Whether ``stored`` (same claim token) is what this failed finish made of it: pending in its backoff with
        this finish's category. A lease expiry's retry is not (the reaper's, category lease_expired)."""
        category = values.get("error_category")
        return (stored["status"] == PENDING and stored["not_before"] is not None and category is not None
                and stored["error_category"] == category != ErrorCategory.LEASE_EXPIRED)

    def _count_run_in(self, conn: sa.Connection, now: datetime, task: dict[str, Any], ended: TaskStatus) -> None:
        """The circuit breaker sees a run end: a failure (retried or not) adds one to its type's failures in a row
        (store/streaks.py: a completion in between starts the count again), and the one that reaches the type's
        ``breaker_failures`` pauses the type. Any other ending writes nothing."""
        if ended is not TaskStatus.FAILED:
            return
        failures = failed_again(conn, task["task_type"], now)
        limit = self._policy_in(conn, task["task_type"])["breaker_failures"]
        if limit and failures >= limit:
            why = " ".join(f"{task['error_category'] or 'unknown'}: {task['error_summary'] or ''}".split())
            self._pause_in(conn, task["task_type"], BREAKER,
                           f"circuit breaker: {failures} failed runs of {task['task_type']} in a row (the last: "
                           f"task {task['id']}, {why[:SUMMARY_CHARS]})")

    def _expire_leases_in(self, conn: sa.Connection, now: datetime, clock: datetime) -> tuple[int, int]:
        """Runs whose lease expired before ``now`` fail with ``lease_expired`` (an attempt): back to pending after
        their backoff (counted from ``clock``, the store's moment), or failed once attempts are spent. (reclaimed,
        failed)."""
        reclaimed = failed = 0
        for run in conn.execute(_EXPIRED, {"b_now": now}).all():
            expired_at = f"{run.lease_expires_at:%Y-%m-%d %H:%M:%S}"
            values: dict[str, Any] = {
                "lease_expires_at": None, "claimed_by": None, "updated_at": now,
                "error_category": ErrorCategory.LEASE_EXPIRED.value,
                "error_summary": f"lease expired at {expired_at} UTC: runner {run.claimed_by} stopped renewing it",
                **self._settled_in(conn, clock, run.task_type, run.attempts + 1, run.max_attempts,
                                   ErrorCategory.LEASE_EXPIRED),
            }
            if values["status"] == FAILED:
                values.update(finished_at=now, current_step="lease expired; attempts spent")
            keys = tuple(sorted(values))
            params = {"b_id": run.id, "b_token": run.claim_token, **{f"v_{k}": values[k] for k in keys}}
            row = conn.execute(update_statement(RUNNING, True, keys, True, self._pg), params).first()
            if row is None:
                continue
            if values["status"] == FAILED:
                failed += 1
                self.tasks_changed(conn)
            else:
                reclaimed += 1
                self._wake(conn)
            self._count_run_in(conn, now, dict(row._mapping), TaskStatus.FAILED)
        return reclaimed, failed
