"""Reads of backlog items: the phase tasks of one item in order, the audit records of those tasks, and the items
seen lately. An item is no table of its own: it is the ``item`` column its phase tasks carry (the context's
"item", revision 0014), read through the partial index ix_tasks_item_id."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from coherence_network.store.core import StoreCore
from coherence_network.store.schema import audit, tasks

ITEM_TASKS = 500  # an item's tasks read at most (phases times iterations: a few dozen in practice)
ITEM_AUDIT = 500  # an item's audit records read at most, oldest first
_WITHOUT_OUTPUT = [c for c in tasks.c if c.name != "output"]  # an item's views show no output tail


class ItemReads(StoreCore):
    """A backlog item's tasks and its decision trail."""

    def item_tasks(self, item: str) -> list[dict[str, Any]]:
        """The item's tasks, oldest first (empty: no task names it), without their output tails."""
        query = sa.select(*_WITHOUT_OUTPUT).where(tasks.c.item == item).order_by(tasks.c.id).limit(ITEM_TASKS)
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(query)])

    def item_audit(self, task_ids: list[int]) -> list[dict[str, Any]]:
        """The audit records of these tasks (an item's), oldest first: its decision trail."""
        if not task_ids:
            return []
        query = sa.select(audit).where(audit.c.task_id.in_(task_ids)).order_by(audit.c.id).limit(ITEM_AUDIT)
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(query)])

    def recent_items(self, *, limit: int, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Items newest first by their latest task: ``[{item, task}]`` (that task, without output), and how many
        items there are."""
        latest = sa.func.max(tasks.c.id).label("latest")
        named = tasks.c.item.is_not(None)
        page = (sa.select(tasks.c.item, latest).where(named).group_by(tasks.c.item)
                .order_by(latest.desc(), tasks.c.item).limit(limit).offset(offset))
        counted = sa.select(sa.func.count(sa.distinct(tasks.c.item))).where(named)

        def read(conn: sa.Connection) -> tuple[list[dict[str, Any]], int]:
            pairs = conn.execute(page).all()
            rows = {r.id: dict(r._mapping) for r in conn.execute(
                sa.select(*_WITHOUT_OUTPUT).where(tasks.c.id.in_([p.latest for p in pairs])))}
            return [{"item": p.item, "task": rows[p.latest]} for p in pairs], int(conn.execute(counted).scalar_one())

        return self._read(read)
