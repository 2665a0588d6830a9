"""Task creates: one task, or a batch in one transaction, each safe to retry with an idempotency key. An operator's
create (one with an actor) is in the audit trail, written in the same transaction."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.contract import MAX_BATCH
from coherence_network.store.audit import AuditBook
from coherence_network.store.schema import tasks
from coherence_network.store.statements import (
    INSERT_ONE_TASK,
    INSERT_TASKS,
    NOTIFIED,
    PENDING,
    TASK_BY_KEY,
    Outcomes,
    Rows,
    same_create,
)
from coherence_network.store.task_reads import TaskReads

ITEM_CHARS = 200  # the item column's width


def item_of(context: dict[str, Any] | None) -> str | None:
    """The backlog item a task belongs to: its context's ``item`` (the project manager sets it), when it fits."""
    item = (context or {}).get("item")
    return item if isinstance(item, str) and 0 < len(item) <= ITEM_CHARS else None


class TaskCreates(TaskReads, AuditBook):
    """Adds pending tasks."""

    def create(self, *, actor: str | None = None, **fields: Any) -> dict[str, Any]:
        """Add a pending task (see ``create_or_replay`` for the fields)."""
        return self.create_or_replay(actor=actor, **fields)[0]

    def create_or_replay(self, *, actor: str | None = None, **fields: Any) -> tuple[dict[str, Any], bool]:
        """Add a pending task; returns (task, created). See ``create_many`` for the fields and the key's rules."""
        return self.create_many([fields], actor=actor)[0]

    def create_many(self, items: Rows, *, actor: str | None = None) -> Outcomes:
        """Add pending tasks in one transaction; returns (task, created) for each item, in order.

        Each item holds ``direction`` and ``task_type`` and may hold ``command``, ``priority``, ``max_attempts``,
        ``timeout_seconds``, ``context`` and ``idempotency_key``. With a key, a repeated create (a client retrying
        after a lost response) returns the task the first one made, with created False; the same key with another
        direction, type or command is a Conflict and nothing of the batch is written.

        ``actor`` (an operator, e.g. cli:alice) puts each task made in the audit trail; None (the pipeline's own
        components) records nothing."""
        if not 1 <= len(items) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1..{MAX_BATCH} tasks, not {len(items)}")
        now = utcnow()
        rows = [self._new_task(now, **item) for item in items]
        alone = len(rows) == 1 and actor is None  # one INSERT (and a read on a replay): no transaction needed
        for last_try in (False, True):
            try:
                with self.single_statement() if alone else self.transaction() as conn:
                    outcomes = self._create_in(conn, rows)
                    if actor is not None:
                        self._audit_many_in(conn, actor, "create", [
                            {"task_id": task["id"], "status_after": task["status"]}
                            for task, created in outcomes if created])
                    return outcomes
            except sa.exc.IntegrityError:
                # a concurrent create with one of these keys won the insert: the next pass replays it
                if last_try or not any(row["idempotency_key"] for row in rows):
                    raise
        raise AssertionError("unreachable")

    def _new_task(
        self,
        now: datetime,
        *,
        direction: str,
        task_type: str,
        command: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        context: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        return {
            "direction": direction,
            "task_type": str(task_type),
            "status": PENDING,
            "command": command,
            "priority": priority,
            "max_attempts": max_attempts or self.max_attempts,
            "timeout_seconds": timeout_seconds,
            "context": context,
            "item": item_of(context),
            "idempotency_key": idempotency_key,
            "created_at": now,
            "updated_at": now,
        }

    def _create_in(self, conn: sa.Connection, rows: Rows) -> Outcomes:
        """Replays from the keys already stored (one look-up for the batch), then one multi-row INSERT; a single
        create (the client's usual call) is one INSERT, which skips a stored key, with the look-up only then."""
        if len(rows) == 1:
            return [self._create_one_in(conn, rows[0])]
        keys = {row["idempotency_key"] for row in rows} - {None}
        stored: dict[str, dict[str, Any]] = {}
        if keys:
            found = conn.execute(sa.select(tasks).where(tasks.c.idempotency_key.in_(sorted(keys))))
            stored = {r.idempotency_key: dict(r._mapping) for r in found}
        fresh: Rows = []
        first_of_key: dict[str, int] = {}  # a key's first fresh row, by its place in ``fresh``
        plan: builtins.list[tuple[str, Any]] = []  # per item: ("stored", task), ("fresh" | "again", place in fresh)
        for row in rows:
            key = row["idempotency_key"]
            if key in stored:
                same_create(key, stored[key], row, f"task {stored[key]['id']}")
                plan.append(("stored", stored[key]))
            elif key in first_of_key:
                same_create(key, fresh[first_of_key[key]], row, "an earlier item of this batch")
                plan.append(("again", first_of_key[key]))
            else:
                if key is not None:
                    first_of_key[key] = len(fresh)
                plan.append(("fresh", len(fresh)))
                fresh.append(row)
        made = [dict(r._mapping) for r in conn.execute(INSERT_TASKS, fresh)] if fresh else []
        if made:
            self._wake(conn)
        return [
            (what, False) if how == "stored" else (made[what], how == "fresh")
            for how, what in plan
        ]

    def _create_one_in(self, conn: sa.Connection, row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """One create: with a key the INSERT skips a key already stored (a concurrent create's too, once it
        commits), and then the task that key made is the answer. The row made sends its own wake-up on
        PostgreSQL."""
        made = conn.execute(INSERT_ONE_TASK[conn.dialect.name, row["idempotency_key"] is not None],
                            {**row, **self._wake_params()} if self._pg else row).first()
        if made is not None:
            task = dict(made._mapping)
            task.pop(NOTIFIED, None)
            self._woken(conn, sent=self._pg)
            return task, True
        stored = dict(conn.execute(TASK_BY_KEY, {"key": row["idempotency_key"]}).one()._mapping)
        same_create(row["idempotency_key"], stored, row, f"task {stored['id']}")
        return stored, False
