"""Pauses: hold the whole pipeline or one task type. The claim hands out nothing of a paused scope (its own
statement reads the pauses, store/statements.py); running tasks finish (drain). Stored, so a restart keeps it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.contract import PAUSE_SCOPES
from coherence_network.store.audit import AuditBook
from coherence_network.store.schema import pauses
from coherence_network.store.streaks import streak_ends

_SHOWN = sa.select(pauses.c.scope, pauses.c.since, pauses.c.paused_by.label("by"), pauses.c.reason)
_ALL_PAUSES = _SHOWN.order_by(pauses.c.since, pauses.c.scope)
_ONE_PAUSE = _SHOWN.where(pauses.c.scope == sa.bindparam("b_scope"))


def _scope(scope: str) -> str:
    if scope not in PAUSE_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(PAUSE_SCOPES)}, not {scope!r}")
    return scope


class PauseBook(AuditBook):
    """Which scopes are paused, since when, by whom and why."""

    def pause(self, scope: str, by: str, reason: str) -> tuple[dict[str, Any], bool]:
        """Pause ``scope`` ("all" or a task type); (the pause: scope, since, by, reason; created). Pausing what is
        paused keeps the first pause (its since, by and reason) and says so with created False: safe to repeat."""
        scope = _scope(scope)
        with self.transaction() as conn:
            return self._pause_in(conn, scope, by, reason)

    def _pause_in(self, conn: sa.Connection, scope: str, by: str, reason: str) -> tuple[dict[str, Any], bool]:
        """``pause`` inside the caller's transaction (the circuit breaker pauses in the failing finish's own)."""
        stored = conn.execute(_ONE_PAUSE, {"b_scope": scope}).first()
        if stored is None:
            row = {"scope": scope, "since": utcnow(), "by": by, "reason": reason}
            try:
                with conn.begin_nested():  # as the registry's upsert: a savepoint, so a lost race keeps the rest
                    conn.execute(pauses.insert().values(scope=scope, since=row["since"], paused_by=by,
                                                        reason=reason))
                    self._audit_in(conn, by, "pause", target=scope, reason=reason)
                return row, True
            except sa.exc.IntegrityError:  # a concurrent pause of this scope won the insert: it is the pause
                stored = conn.execute(_ONE_PAUSE, {"b_scope": scope}).first()
        assert stored is not None
        return dict(stored._mapping), False

    def resume(self, scope: str, by: str) -> dict[str, Any] | None:
        """Resume ``scope``; the pause it ended (None: it was not paused, and nothing changes). Waiting claims
        look again once it commits, on every replica. ``by`` is the actor in the audit trail. A resumed type's
        failures in a row count from nothing again (the circuit breaker)."""
        scope = _scope(scope)
        with self.transaction() as conn:
            stored = conn.execute(_ONE_PAUSE, {"b_scope": scope}).first()
            if stored is None:
                return None
            conn.execute(pauses.delete().where(pauses.c.scope == scope))
            streak_ends(conn, scope)
            self._audit_in(conn, by, "resume", target=scope,
                           detail={"paused_since": stored.since.isoformat(), "paused_by": stored.by})
            self._wake(conn)
            return dict(stored._mapping)

    def pauses(self) -> list[dict[str, Any]]:
        """The scopes paused now, oldest first."""
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(_ALL_PAUSES)])
