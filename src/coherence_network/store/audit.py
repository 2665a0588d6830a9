"""The audit trail: an append-only record of every operator action. Each record is written in the action's own
transaction, so an action that commits has exactly one record and one that rolls back has none; a replayed action
(the same create, decision or pause again) changes nothing and records nothing. Read newest first, by pages whose
cursor is an id (``before_id``), so a page stays the same while new records are appended."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.contract_steering import channel_of
from coherence_network.store.core import StoreCore
from coherence_network.store.schema import audit

_APPEND = audit.insert()
_NEWEST_FIRST = sa.select(audit).order_by(audit.c.id.desc())


class AuditBook(StoreCore):
    """Appends to the audit trail, and reads it."""

    def _audit_in(
        self,
        conn: sa.Connection,
        actor: str,
        action: str,
        *,
        task_id: int | None = None,
        target: str | None = None,
        reason: str | None = None,
        before: str | None = None,
        after: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one record inside the caller's transaction (``actor`` e.g. cli:alice; its channel follows)."""
        self._audit_many_in(conn, actor, action, [{"task_id": task_id, "target": target, "reason": reason,
                                                   "status_before": before, "status_after": after,
                                                   "detail": detail}])

    def _audit_many_in(self, conn: sa.Connection, actor: str, action: str, records: list[dict[str, Any]]) -> None:
        """Append one record per item of ``records`` (task_id, target, reason, status_before, status_after, detail)
        in one statement: a batch create of a thousand tasks is one INSERT, not a thousand."""
        if records:
            common = {"at": utcnow(), "actor": actor, "channel": channel_of(actor), "action": action}
            rows = [{**common, **record} for record in records]
            conn.execute(_APPEND, rows[0] if len(rows) == 1 else rows)  # one row: no executemany machinery

    def audit_note(self, actor: str, action: str, *, target: str | None = None, reason: str | None = None,
                   detail: dict[str, Any] | None = None) -> None:
        """Record an act the store did not carry out itself (a restart request written on a host, a console
        sign-in), in a transaction of its own."""
        with self.transaction() as conn:
            self._audit_in(conn, actor, action, target=target, reason=reason, detail=detail)

    def audit_page(
        self,
        *,
        limit: int,
        before_id: int | None = None,
        actor: str | None = None,
        channel: str | None = None,
        action: str | None = None,
        task_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Records matching every filter given, newest first, older than ``before_id`` when given; and the
        ``before_id`` of the next (older) page, None when this one is the last. Served by the indexes on (task_id,
        id), (action, id) and at; the actor and channel filters read along the newest records."""
        conditions = [column == value for column, value in ((audit.c.actor, actor), (audit.c.channel, channel),
                                                             (audit.c.action, action), (audit.c.task_id, task_id))
                      if value is not None]
        if before_id is not None:
            conditions.append(audit.c.id < before_id)
        if since is not None:
            conditions.append(audit.c.at >= since)
        if until is not None:
            conditions.append(audit.c.at < until)
        query = _NEWEST_FIRST.where(*conditions).limit(limit + 1)
        rows = self._read(lambda conn: [dict(row._mapping) for row in conn.execute(query)])
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, rows[-1]["id"] if more else None
