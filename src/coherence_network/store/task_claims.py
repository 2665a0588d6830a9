"""Claims: the most urgent pending tasks to running for a runner, each with its own claim token and lease, safe to
retry by the claim's request id. Limits, pauses and the day's cost cap are in the statements (store/statements.py,
store/limited_claims.py)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.contract import MAX_CLAIM
from coherence_network.store.costs import CostBook
from coherence_network.store.limited_claims import claim_rows
from coherence_network.store.statements import (
    CLAIMED_BY_REQUEST,
    LIMITED,
    Rows,
    claim_one_statement,
    claim_order,
    claimable_statement,
)


@dataclass(frozen=True)
class ClaimAsk:
    """One claim as a runner asks it (``types`` empty: any type)."""

    runner_id: str
    max_tasks: int = 1
    types: tuple[str, ...] = ()
    lease_seconds: float | None = None
    request_id: str | None = None
    replay: bool = True

    @classmethod
    def of(cls, runner_id: str, max_tasks: int, types: Iterable[str] | None, lease_seconds: float | None,
           request_id: str | None, replay: bool = True) -> ClaimAsk:
        """From a request's fields (types as the API hands them: an enum's values, or None)."""
        return cls(runner_id, max_tasks, tuple(str(t) for t in types or []), lease_seconds, request_id, replay)

    @property
    def replayable(self) -> bool:
        """Could it be a retry of a claim that was answered? ``replay=False``: a long poll's recheck, which cannot."""
        return self.request_id is not None and self.replay


# How long a claim of some types that found a limited type among them goes straight to the transaction (PostgreSQL,
# one task): a hint only, never a rule (a claim without it looks at the limits itself), so replicas need not agree.
LIMITED_HINT_SECONDS = 10.0
_HINTS_KEPT = 64  # distinct type lists remembered; runners ask for a few


class TaskClaims(CostBook):
    """The claim of one task or several, on both stores."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limited_until: dict[tuple[str, ...], float] = {}  # type list -> monotonic time the hint ends

    def claim(
        self,
        runner_id: str,
        *,
        types: Iterable[str] | None = None,
        lease_seconds: float | None = None,
        request_id: str | None = None,
        replay: bool = True,
    ) -> dict[str, Any] | None:
        """Atomically move the most urgent pending task to running for ``runner_id``; None when there is none.

        ``request_id`` names one logical claim: if that claim already got a task (its response was lost and the
        client retried), the same task and claim token are returned instead of a second task. ``replay=False``
        skips that look-up (a long poll's rechecks within one request cannot have been answered yet)."""
        claimed = self.claim_many(runner_id, 1, types=types, lease_seconds=lease_seconds, request_id=request_id,
                                  replay=replay)
        return claimed[0] if claimed else None

    def claim_many(
        self,
        runner_id: str,
        max_tasks: int,
        *,
        types: Iterable[str] | None = None,
        lease_seconds: float | None = None,
        request_id: str | None = None,
        replay: bool = True,
    ) -> Rows:
        """Claim up to ``max_tasks`` of the most urgent pending tasks for ``runner_id``, most urgent first; each gets
        its own claim token (one statement unless a limited type is among them: store/limited_claims.py). A
        retried ``request_id`` returns what that claim got.

        On SQLite a read first: finding nothing costs no write transaction (the file stays untouched). On PostgreSQL
        the UPDATE ... SKIP LOCKED is as cheap as the read would be, and a claim of one task is one statement that
        commits by itself unless a limited type could be among it (``_claim_one_alone_in``; a claim of types that just
        found one goes straight to the transaction for a while: LIMITED_HINT_SECONDS)."""
        if not 1 <= max_tasks <= MAX_CLAIM:
            raise ValueError(f"max_tasks must be 1..{MAX_CLAIM}")
        ask = ClaimAsk.of(runner_id, max_tasks, types, lease_seconds, request_id, replay)
        if not self._pg:
            params = self._claim_params(utcnow(), ask)
            with self.connection() as conn:
                if conn.execute(claimable_statement(bool(ask.types)), params).first() is None:
                    if not ask.replayable:
                        return []
                    return [dict(r._mapping) for r in conn.execute(CLAIMED_BY_REQUEST, params)]
        if self._pg and max_tasks == 1 and self._may_claim_alone(ask):
            with self.single_statement() as conn:
                alone = self._claim_one_alone_in(conn, ask)
            return alone if alone is not None else self._claim_locked(ask, tried_alone=True)
        return self._claim_locked(ask, tried_alone=False)

    def _claim_locked(self, ask: ClaimAsk, *, tried_alone: bool) -> Rows:
        """The claim in a transaction (the limits' lock when it needs it); after the statement alone found nothing
        free (``tried_alone``) it goes straight to that lock."""
        with self.transaction() as conn:
            return self._claim_in(conn, self._lease_clock(conn), ask, unlimited_first=not tried_alone)

    def _may_claim_alone(self, ask: ClaimAsk) -> bool:
        """Not for a while after a claim of these types found a limited type among them (LIMITED_HINT_SECONDS)."""
        return self._limited_until.get(ask.types, 0.0) <= time.monotonic()

    def _claim_one_alone_in(self, conn: sa.Connection, ask: ClaimAsk) -> Rows | None:
        """PostgreSQL, one task, in one statement on ``conn`` in autocommit (statements.claim_one_statement): what it
        claimed (or replayed), or None when it found nothing of a type without a limit and a limited type could be
        among the claim's, which only a claim holding the limits' lock may take (and for a while the claims of these
        types go straight to that transaction: the statement would find the same)."""
        statement = claim_one_statement(bool(ask.types), ask.replayable)
        found = [row._asdict() for row in conn.execute(statement, self._claim_params(utcnow(), ask))]
        claimed = [{k: v for k, v in row.items() if k != LIMITED} for row in found if row["id"] is not None]
        if claimed:
            self.tasks_changed(conn)
            return sorted(claimed, key=claim_order)
        if not found[0][LIMITED]:
            return []
        if len(self._limited_until) >= _HINTS_KEPT:
            self._limited_until.clear()
        self._limited_until[ask.types] = time.monotonic() + LIMITED_HINT_SECONDS
        return None

    def _claim_in(self, conn: sa.Connection, now: datetime, ask: ClaimAsk, *, unlimited_first: bool = True) -> Rows:
        """The claim inside the caller's transaction, its leases from ``now``. Only a claim that took nothing looks
        for what its request id got before (a retry after a lost response): the UPDATE itself refuses to claim for a
        request that has. ``unlimited_first``: as store/limited_claims.py says."""
        params = self._claim_params(now, ask)
        claimed = claim_rows(conn, self._pg, ask.max_tasks, bool(ask.types), ask.replayable, params, unlimited_first)
        if claimed:
            self.tasks_changed(conn)
        elif ask.replayable:
            claimed = [dict(r._mapping) for r in conn.execute(CLAIMED_BY_REQUEST, params)]
        return sorted(claimed, key=claim_order)

    def _claim_params(self, now: datetime, ask: ClaimAsk) -> dict[str, Any]:
        """What a claim's statements bind (``b_types`` only for a claim of some types, ``b_limit`` of several)."""
        params: dict[str, Any] = {
            "b_runner": ask.runner_id,
            "b_request": ask.request_id,
            "b_now": now,
            "b_lease": now + timedelta(seconds=ask.lease_seconds or self.lease_seconds),
        }
        if ask.types:
            params["b_types"] = list(ask.types)
        if ask.max_tasks > 1:
            params["b_limit"] = ask.max_tasks
        params.update(self.day_cap_params(now))  # the day's cost cap holds agent tasks (store/statements.py)
        return params
