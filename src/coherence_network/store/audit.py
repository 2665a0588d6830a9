"""The audit trail: an append-only record of every operator action. Each record is written in the action's own
transaction, so an action that commits has exactly one record and one that rolls back has none; a replayed action
(the same create, decision or pause again) changes nothing and records nothing."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.contract import channel_of
from coherence_network.store.core import StoreCore
from coherence_network.store.schema import audit

_APPEND = audit.insert()


class AuditBook(StoreCore):
    """Appends to the audit trail (reads of it are in the same room)."""

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
            conn.execute(_APPEND, [{**common, **record} for record in records])
