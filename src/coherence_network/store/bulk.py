"""Bulk actions: cancel or retry every task a filter matches, in two steps (the API signs what a preview showed; see
api/bulk.py). The store's part: which tasks a filter matches (the list's filters and its search), how many and the
newest few, and the act itself.

The act moves each task with the store's own single-task move (``retry``, ``cancel``), so a bulk move is what that
many single moves would be: the same checks, one audit record per task, and each its own short transaction. The ids
are read 500 at a time, in id order, up to the preview's newest id: a task created after the preview is never
taken, and no lock is held across the whole act (claims and finishes go on between its moves). A task that changed
meanwhile (claimed, finished, moved by someone else) is skipped and counted. A completed act ends with one record of
its own (``bulk_<action>``, target ``bulk:<key>``): the same token again finds it and acts on nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from coherence_network.store.cancels import CancelBook
from coherence_network.store.errors import Conflict, NotFound
from coherence_network.store.schema import audit, tasks
from coherence_network.store.search import search_condition
from coherence_network.store.statements import RUNNING

CHUNK = 500  # ids read per query while acting
_SAMPLE_COLUMNS = (tasks.c.id, tasks.c.task_type, tasks.c.status, tasks.c.direction, tasks.c.created_at)
_SAMPLE_DIRECTION_CHARS = 200
_RECORD = (sa.select(audit.c.detail)
           .where(audit.c.action == sa.bindparam("b_action"), audit.c.target == sa.bindparam("b_target"))
           .order_by(audit.c.id).limit(1))


@dataclass(frozen=True)
class Selection:
    """The tasks a bulk action takes: in one of ``statuses`` (those the action can move; a filter's status narrows
    them to one) and meeting every other condition given. Times compare with ``created_at`` strictly; ``text`` is
    the list's search (store/search.py)."""

    statuses: tuple[str, ...]
    task_type: str | None = None
    created_before: datetime | None = None
    created_after: datetime | None = None
    text: str | None = None


class BulkBook(CancelBook):
    """Match, count and act on many tasks, each with the single-task moves it inherits (retry, cancel)."""

    def _where(self, selection: Selection, max_id: int | None) -> list[sa.ColumnElement[bool]]:
        where: list[sa.ColumnElement[bool]] = [tasks.c.status.in_(selection.statuses)]
        if RUNNING in selection.statuses:  # a running task whose cancel was requested has nothing left to take
            where.append(sa.or_(tasks.c.status != RUNNING, tasks.c.cancel_requested_at.is_(None)))
        if selection.task_type is not None:
            where.append(tasks.c.task_type == selection.task_type)
        if selection.created_before is not None:
            where.append(tasks.c.created_at < selection.created_before)
        if selection.created_after is not None:
            where.append(tasks.c.created_at > selection.created_after)
        if selection.text is not None:
            where.append(search_condition(self._pg, selection.text))
        if max_id is not None:
            where.append(tasks.c.id <= max_id)
        return where

    def bulk_preview(self, selection: Selection, sample: int) -> dict[str, Any]:
        """{count, max_id, sample}: how many tasks match now, the newest one's id (None: none) and the newest
        ``sample`` of them (id, task_type, status, direction cut short, created_at)."""
        where = self._where(selection, None)
        counted = sa.select(sa.func.count(), sa.func.max(tasks.c.id)).where(*where)
        newest = sa.select(*_SAMPLE_COLUMNS).where(*where).order_by(tasks.c.id.desc()).limit(sample)

        def read(conn: sa.Connection) -> dict[str, Any]:
            count, max_id = conn.execute(counted).one()
            rows = [dict(r._mapping) for r in conn.execute(newest)]
            for row in rows:
                row["direction"] = row["direction"][:_SAMPLE_DIRECTION_CHARS]
            return {"count": int(count), "max_id": max_id, "sample": rows}

        return self._read(read)

    def match_ids(self, selection: Selection, max_id: int, *, after: int = 0, limit: int = CHUNK) -> list[int]:
        """The ids matching ``selection`` now, no newer than ``max_id``, after ``after``, in id order (a page of an
        act: the next one starts after its last id)."""
        query = (sa.select(tasks.c.id).where(*self._where(selection, max_id), tasks.c.id > after)
                 .order_by(tasks.c.id).limit(limit))
        return self._read(lambda conn: list(conn.execute(query).scalars()))

    def bulk_act(self, action: str, selection: Selection, max_id: int | None, *, actor: str, reason: str, key: str,
                 previewed: int, detail: dict[str, Any]) -> dict[str, Any]:
        """Move every task matching ``selection`` up to ``max_id`` (``action``: retry or cancel) as ``actor`` for
        ``reason``; {previewed, acted, skipped, changed, repeated}. ``key`` names the preview: an act of the same key
        that completed before is answered as it was (``repeated``) and nothing is moved. ``detail`` (the filter as
        given) goes into the act's own record."""
        record, target = f"bulk_{action}", f"bulk:{key}"
        earlier = self._read(lambda conn: conn.execute(_RECORD, {"b_action": record, "b_target": target}).first())
        if earlier is not None:
            done = dict(earlier.detail)
            return {"previewed": done["previewed"], "acted": done["acted"], "skipped": done["skipped"],
                    "changed": done["acted"] != done["previewed"], "repeated": True}
        acted = skipped = 0
        after = 0
        while max_id is not None:
            ids = self.match_ids(selection, max_id, after=after)
            for task_id in ids:
                try:
                    if action == "retry":
                        self.retry(task_id, actor=actor, reason=reason)
                    else:
                        self.cancel(task_id, actor, reason)
                    acted += 1
                except (Conflict, NotFound):  # moved, finished or deleted since it was read: not this act's to take
                    skipped += 1
            if len(ids) < CHUNK:
                break
            after = ids[-1]
        counts = {"previewed": previewed, "acted": acted, "skipped": skipped}
        with self.transaction() as conn:
            self._audit_in(conn, actor, record, target=target, reason=reason,
                           detail={**detail, **counts, "max_id": max_id})
        return {**counts, "changed": acted != previewed, "repeated": False}
