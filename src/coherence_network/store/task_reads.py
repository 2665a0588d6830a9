"""Task reads: one task, a page of tasks (filters, sorts, search) and the counts by status, identical on SQLite and
PostgreSQL. Every read is safe to repeat, so each runs once more on a fresh connection after a server restart."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from coherence_network.contract import SORT_COLUMNS, TaskStatus
from coherence_network.store.core import StoreCore
from coherence_network.store.errors import NotFound
from coherence_network.store.schema import tasks
from coherence_network.store.search import COUNT_CAP, FTS_TABLE, fts5_match, pg_matches, search_condition, search_words
from coherence_network.store.statements import (
    FAILED,
    OUT_OF_ATTEMPTS,
    SPENT,
    Rows,
    count_capped,
    row_dict,
    sort_order,
)

_BY_STATUS = sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status)


class TaskReads(StoreCore):
    """Reads of the tasks table."""

    def get(self, task_id: int) -> dict[str, Any]:
        row = self._read(lambda conn: row_dict(
            conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first()))
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return row

    def list(
        self,
        *,
        status: str | None = None,
        task_type: str | None = None,
        order: Literal["newest", "oldest"] = "newest",
        limit: int = 50,
        offset: int = 0,
        finished_after: datetime | None = None,
        search: str | None = None,
        sort: str = "id",
        descending: bool | None = None,
        out_of_attempts: bool = False,
    ) -> tuple[Rows, int]:
        """A page of tasks and the total that match the filter.

        ``search`` keeps tasks whose direction, output or question hold every word of it (store/search.py); its
        total is counted up to COUNT_CAP + 1, which reads "more than COUNT_CAP".
        ``sort`` is one of SORT_COLUMNS, ``descending`` its direction (by default ``order``: newest is descending).
        ``finished_after`` keeps tasks finished strictly after that time and orders them by ``finished_at`` (then
        id), so a reader that remembers the last time it saw can page through what finished since; it takes no other
        sort. ``out_of_attempts`` keeps failed tasks whose attempts are spent (only an operator's retry runs them).
        A ValueError names a column that cannot be sorted on, or search text that cannot be searched."""
        if sort not in SORT_COLUMNS:
            raise ValueError(f"cannot sort tasks by {sort!r}; sortable: {', '.join(SORT_COLUMNS)}")
        where = []
        if status:
            where.append(tasks.c.status == str(status))
        if task_type:
            where.append(tasks.c.task_type == str(task_type))
        if out_of_attempts:
            where.append(OUT_OF_ATTEMPTS)
        down = order == "newest" if descending is None else descending
        if finished_after is not None:
            if sort != "id":
                raise ValueError("finished_after orders by finish time; it takes no other sort")
            where.append(tasks.c.finished_at > finished_after)
            ordering = [c.desc() if down else c.asc() for c in (tasks.c.finished_at, tasks.c.id)]
        else:
            ordering = sort_order(sort, down)
        first_ids: sa.Select[tuple[int]] | None = None
        if search is None:
            page = sa.select(tasks).where(*where).order_by(*ordering)
            counted = sa.select(sa.func.count()).select_from(tasks).where(*where)
        elif self._pg or finished_after is not None or sort != "id":
            matching = [*where, search_condition(self._pg, search)]
            page = sa.select(tasks).where(*matching).order_by(*ordering)
            counted = count_capped(sa.select(tasks.c.id).where(*matching))
        else:  # SQLite, newest or oldest first: FTS5 reads its matches in id order and stops at the page's end
            match = fts5_match(search)
            rowid = FTS_TABLE.c.rowid
            page = (sa.select(tasks).select_from(FTS_TABLE.join(tasks, tasks.c.id == rowid))
                    .where(match, *where).order_by(rowid.desc() if down else rowid.asc()))
            counted = count_capped(sa.select(rowid).where(match) if not where
                                    else sa.select(tasks.c.id).where(*where, search_condition(False, search)))
            if not where:  # the first COUNT_CAP + 1 ids in one read give the total and (mostly) the page
                first_ids = sa.select(rowid).where(match).order_by(rowid.desc() if down else rowid.asc())

        def read(conn: sa.Connection) -> tuple[Rows, int]:
            chosen, count = page, counted
            if first_ids is not None:
                # One pass over the index instead of two (page, count): a prefix common to many words makes FTS5
                # merge all of their lists each time (35 ms at 100,000 tasks).
                ids = conn.execute(first_ids.limit(COUNT_CAP + 1)).scalars().all()
                if offset + limit <= len(ids) or len(ids) <= COUNT_CAP:
                    shown = ids[offset:offset + limit]
                    rows = conn.execute(sa.select(tasks).where(tasks.c.id.in_(shown)).order_by(*ordering))
                    return [dict(r._mapping) for r in rows], len(ids)
            if not self._pg and sort != "id" and finished_after is None and (where or search is not None):
                total = int(conn.execute(count).scalar_one())
                if total > COUNT_CAP:
                    # SQLite keeps no statistics: it would read every task the filter or search matches and sort
                    # them all; with this many, walking the sort's index and skipping the others ends a page
                    # sooner. Its conditions are written so that no index can serve them (``|| ''``, ``+ 0``).
                    unindexed = [(tasks.c[name].concat("") == str(value))
                                 for name, value in (("status", status), ("task_type", task_type)) if value]
                    if out_of_attempts:
                        unindexed += [tasks.c.status.concat("") == FAILED, SPENT]
                    if search is not None:
                        unindexed.append(search_condition(False, search, ids=tasks.c.id + 0))
                    chosen = sa.select(tasks).where(*unindexed).order_by(*ordering)
                return [dict(r._mapping) for r in conn.execute(chosen.limit(limit).offset(offset))], total
            if self._pg and search is not None:
                # At most COUNT_CAP matches: take their ids from the GIN index and look the tasks up by id. The
                # planner cannot estimate a prefix, and would walk an index of tasks checking each one's text
                # (100 ms for a word in 10 tasks of 100,000); more matches than that fill a page from that walk fast.
                words = search_words(search)
                ids = conn.execute(pg_matches(words).limit(COUNT_CAP + 1)).scalars().all() if words else []
                if len(ids) <= COUNT_CAP:
                    known = [*where, tasks.c.id.in_(ids)]
                    chosen = sa.select(tasks).where(*known).order_by(*ordering)
                    count = sa.select(sa.func.count()).select_from(tasks).where(*known)
            items = [dict(r._mapping) for r in conn.execute(chosen.limit(limit).offset(offset))]
            return items, int(conn.execute(count).scalar_one())

        return self._read(read)

    def count(self) -> dict[str, Any]:
        """{"total": n, "by_status": {status: n}} with every status present.

        Counting scans the status index, which grows with the store; dashboards poll it, so the answer is reused
        (``reused``: until this store changes a task's status, another replica's notification, or
        ``count_cache_seconds``)."""

        def read() -> dict[str, int]:
            with self.connection() as conn:
                found = {status: int(n) for status, n in conn.execute(_BY_STATUS)}
            return {status.value: found.get(status.value, 0) for status in TaskStatus}

        by_status = self.reused("count", read)
        return {"total": sum(by_status.values()), "by_status": dict(by_status)}

    def running_leases(self) -> dict[int, dict[str, Any]]:
        """{id: {lease_expires_at, timeout_seconds}} of the running tasks (what the orphan rule needs beyond the
        pipeline summary), through the status index."""
        query = sa.select(tasks.c.id, tasks.c.lease_expires_at, tasks.c.timeout_seconds).where(
            tasks.c.status == TaskStatus.RUNNING)
        with self.connection() as conn:
            return {r.id: {"lease_expires_at": r.lease_expires_at, "timeout_seconds": r.timeout_seconds}
                    for r in conn.execute(query)}
