"""TaskStore: every task operation as one short transaction, identical on SQLite and PostgreSQL.

State changes are single conditional UPDATEs (``WHERE status = ...``), so two writers can never both win; when the
UPDATE matches nothing the row is read to say why (404 or a conflict naming the current status).
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from coherence_network.clock import utcnow
from coherence_network.contract import FINISH_STATUSES, LEGAL_MOVES, SORT_COLUMNS, TaskStatus
from coherence_network.store.db import read_retrying
from coherence_network.store.errors import Conflict, NotFound
from coherence_network.store.notify import CHANNEL
from coherence_network.store.schema import UTCDateTime, components, runners, tasks
from coherence_network.store.search import (
    COUNT_CAP,
    FTS_TABLE,
    fts5_match,
    pg_matches,
    search_condition,
    search_words,
)

PENDING, RUNNING, FAILED = TaskStatus.PENDING.value, TaskStatus.RUNNING.value, TaskStatus.FAILED.value
# The fields that make a create the same create: a reused idempotency key with other values is a client bug.
_IDEMPOTENT_FIELDS = ("direction", "task_type", "command")



def _row(row: sa.Row[Any] | None) -> dict[str, Any] | None:
    return None if row is None else dict(row._mapping)


_INSERT_TASKS = tasks.insert().returning(*tasks.c, sort_by_parameter_order=True)
MAX_BATCH = 1000  # tasks in one batch create (one transaction)
MAX_CLAIM = 100  # tasks in one claim
_NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")
_TAKE_WRITE_LOCK = sa.text("UPDATE tasks SET id = id WHERE 0")  # SQLite: the write lock, and not a row touched
# Marks on the connection of the transaction in progress (``Connection.info``), read and cleared by ``_write``.
_CHANGED, _WOKE = "coherence_tasks_changed", "coherence_work_available"


def seconds_between(
    postgres: bool, start: sa.ColumnElement[Any], end: sa.ColumnElement[Any]
) -> sa.ColumnElement[float]:
    """``end - start`` in seconds as a float, in the backend's own date arithmetic."""
    if postgres:
        return sa.cast(sa.func.extract("epoch", end - start), sa.Float)
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0


def _durations(postgres: bool, finished: sa.ColumnElement[Any]) -> dict[str, sa.ColumnElement[float]]:
    """The stored durations of a run that ends at ``finished`` (set in the UPDATE that ends it), so metrics read
    them from an index instead of computing them row by row."""
    return {
        "run_seconds": seconds_between(postgres, tasks.c.started_at, finished),
        "queue_seconds": seconds_between(postgres, tasks.c.created_at, tasks.c.started_at),
    }


def _pending(typed: bool) -> sa.Select[tuple[int]]:
    """Ids of claimable tasks (of the types bound as ``b_types`` when ``typed``)."""
    pick = sa.select(tasks.c.id).where(tasks.c.status == PENDING)
    if typed:
        pick = pick.where(tasks.c.task_type.in_(sa.bindparam("b_types", expanding=True)))
    return pick


@cache
def _claimable_statement(typed: bool) -> sa.Select[tuple[int]]:
    """Is any task claimable? A read, so a claim that would find nothing opens no write transaction."""
    return _pending(typed).limit(1)


@cache
def _claim_statement(typed: bool, postgres: bool, several: bool, replayable: bool) -> sa.Update:
    """Built once: statement construction costs more than SQLite's execution of it.

    ``several`` picks up to ``b_limit`` tasks (``id IN``); one task keeps ``id =``, which both planners like best.
    ``replayable`` claims only if this request id got nothing yet, in the same statement (a retried claim then
    updates nothing and reads what it got), so a first claim costs no separate look-up."""
    pick = _pending(typed).order_by(tasks.c.priority.desc(), tasks.c.id.asc())
    pick = pick.limit(sa.bindparam("b_limit", type_=sa.Integer)) if several else pick.limit(1)
    if postgres:
        pick = pick.with_for_update(skip_locked=True)
    chosen: sa.ColumnElement[bool]
    if several:
        # A materialized CTE runs the pick once: as a plain IN subquery PostgreSQL may run it again, and with
        # SKIP LOCKED a second run skips the rows the first locked and picks others (more than the limit).
        picked = pick.cte("picked").prefix_with("MATERIALIZED") if postgres else pick.subquery()
        chosen = tasks.c.id.in_(sa.select(picked.c.id))
    else:
        chosen = tasks.c.id == pick.scalar_subquery()
    condition: list[sa.ColumnElement[bool]] = [chosen, tasks.c.status == PENDING]
    if replayable:
        earlier = tasks.alias("earlier")
        condition.append(~sa.exists().where(
            earlier.c.claim_request_id == sa.bindparam("b_request"),
            earlier.c.claimed_by == sa.bindparam("b_runner"),
            earlier.c.status == RUNNING,
        ))
    return (
        tasks.update()
        .where(*condition)
        .values(
            status=RUNNING,
            claimed_by=sa.bindparam("b_runner"),
            claim_request_id=sa.bindparam("b_request"),
            claim_token=tasks.c.claim_token + 1,
            lease_expires_at=sa.bindparam("b_lease", type_=UTCDateTime),
            started_at=sa.bindparam("b_now", type_=UTCDateTime),
            finished_at=None,
            exit_code=None,
            progress_pct=None,
            current_step=None,
            run_seconds=None,
            queue_seconds=None,
            updated_at=sa.bindparam("b_now", type_=UTCDateTime),
        )
        .returning(*tasks.c)
    )


_CLAIMED_BY_REQUEST = (
    sa.select(tasks)
    .where(
        tasks.c.claim_request_id == sa.bindparam("b_request"),
        tasks.c.claimed_by == sa.bindparam("b_runner"),
        tasks.c.status == RUNNING,
    )
    .order_by(tasks.c.priority.desc(), tasks.c.id.asc())
)


def _claim_order(task: dict[str, Any]) -> tuple[int, int]:
    """The claim's own order (most urgent first): RETURNING gives rows in no promised order."""
    return -task["priority"], task["id"]


@cache
def _update_statement(
    needed: str, fenced: bool, keys: tuple[str, ...], count_attempt: bool, postgres: bool
) -> sa.Update:
    """``UPDATE tasks SET <keys> WHERE id = ? AND status = <needed> [AND claim_token = ?]``, built once per shape.

    ``count_attempt`` adds one to ``attempts`` in the same statement (an attempt that ended in failure); a run that
    ends (``finished_at`` set) stores its durations in it too."""
    condition = [tasks.c.id == sa.bindparam("b_id"), tasks.c.status == needed]
    if fenced:
        condition.append(tasks.c.claim_token == sa.bindparam("b_token"))
    values: dict[str, Any] = {key: sa.bindparam(f"v_{key}", type_=tasks.c[key].type) for key in keys}
    if count_attempt:
        values["attempts"] = tasks.c.attempts + 1
    if "finished_at" in keys and "run_seconds" not in keys:
        values.update(_durations(postgres, values["finished_at"]))
    return tasks.update().where(*condition).values(values).returning(*tasks.c)


def _same_create(key: str, earlier: dict[str, Any], values: dict[str, Any], where: str) -> None:
    """A reused idempotency key must name the same create: another direction, type or command is a client bug."""
    if any(earlier[f] != values[f] for f in _IDEMPOTENT_FIELDS):
        raise Conflict(
            f"idempotency key {key!r} was already used by {where} with a different direction, type or command; "
            "use a new key for a new task",
            earlier.get("status"),
        )


def _count_capped(matches: sa.Select[Any]) -> sa.Select[Any]:
    """How many rows ``matches`` gives, counted up to COUNT_CAP + 1 (a search's total: see store/search.py)."""
    return sa.select(sa.func.count()).select_from(matches.limit(COUNT_CAP + 1).subquery())


def _sort_order(column: str, descending: bool) -> list[sa.UnaryExpression[Any]]:
    """ORDER BY for a sort, in the order of the index that serves it. Priority breaks ties the claim's way (equal
    priorities oldest first when the most urgent lead), so its index is the claim's order read either way."""
    if column == "id":
        return [tasks.c.id.desc() if descending else tasks.c.id.asc()]
    first = tasks.c[column].desc() if descending else tasks.c[column].asc()
    tie_down = descending != (column == "priority")
    return [first, tasks.c.id.desc() if tie_down else tasks.c.id.asc()]


# Inside TaskStore, ``list`` names its method: these spell the builtin's types for its signatures.
Rows = list[dict[str, Any]]
Outcomes = list[tuple[dict[str, Any], bool]]


@dataclass
class ReapResult:
    """Expired leases handled by one reaper pass."""

    reclaimed: int = 0
    failed: int = 0
    waited: float | None = None  # set when the pass held back: seconds it waited for the store's write lock


class TaskStore:
    """Tasks and the runner registry on one SQLAlchemy engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = 60.0,
        max_attempts: int = 3,
        tail_bytes: int = 8000,
        count_cache_seconds: float = 0.0,
    ):
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.tail_bytes = tail_bytes
        self.count_cache_seconds = count_cache_seconds
        self._pg = engine.dialect.name == "postgresql"
        self._writes = 0  # bumped after each committed write that changed a task; invalidates the count cache
        self._count_cache: tuple[int, float, dict[str, Any]] | None = None
        # Names this store in its notifications, so a listener can tell another process's writes from its own.
        self.instance = uuid.uuid4().hex
        # Called (in the writing thread) after a commit that made a task claimable; the API wakes its waiters.
        self.on_work: Callable[[], None] | None = None

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction. Statements in it mark what they did (``_changed``, ``_wake``); after the commit a
        change invalidates the count cache and a wake calls ``on_work``. A rollback does neither."""
        with self.engine.connect() as conn:
            try:
                with conn.begin():
                    yield conn
                changed, woke = conn.info.get(_CHANGED, False), conn.info.get(_WOKE, False)
            finally:
                conn.info.pop(_CHANGED, None)
                conn.info.pop(_WOKE, None)
        if changed or woke:
            self._writes += 1
        if woke and self.on_work is not None:
            self.on_work()

    def _lease_clock(self, conn: sa.Connection) -> datetime:
        """The moment a lease granted in this transaction starts: once the transaction holds the store's write lock.

        On SQLite a writer waits (up to the busy timeout) for another writer's lock; a lease counted from before that
        wait could be spent, or nearly, when the claim is answered, and the runner, which counts the lease it was
        granted from the answer's arrival, would start a claim the reaper may already have handed to someone else.
        A statement that writes nothing takes SQLite's lock here; PostgreSQL's claim skips locked rows instead of
        waiting for them."""
        if not self._pg:
            conn.execute(_TAKE_WRITE_LOCK)
        return utcnow()

    def _changed(self, conn: sa.Connection) -> None:
        """This transaction changed a task's status (counts are stale once it commits)."""
        conn.info[_CHANGED] = True

    def _wake(self, conn: sa.Connection) -> None:
        """This transaction made a task claimable: waiting claims should look again once it commits.

        On PostgreSQL a NOTIFY in the same transaction tells every replica's listener; PostgreSQL delivers it only
        at commit (never on rollback), so no listener wakes before the row is visible."""
        conn.info[_WOKE] = True
        if self._pg:
            conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": self.instance})

    def invalidate_counts(self) -> None:
        """Another process changed tasks (a replica's notification): the next count reads the store."""
        self._writes += 1

    # --- reads ----------------------------------------------------------------------------------------------
    def get(self, task_id: int) -> dict[str, Any]:
        row = read_retrying(self.engine, lambda conn: _row(
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
    ) -> tuple[Rows, int]:
        """A page of tasks and the total that match the filter.

        ``search`` keeps tasks whose direction, output or question hold every word of it (store/search.py); its
        total is counted up to COUNT_CAP + 1, which reads "more than COUNT_CAP".
        ``sort`` is one of SORT_COLUMNS, ``descending`` its direction (by default ``order``: newest is descending).
        ``finished_after`` keeps tasks finished strictly after that time and orders them by ``finished_at`` (then
        id), so a reader that remembers the last time it saw can page through what finished since; it takes no other
        sort. A ValueError names a column that cannot be sorted on, or search text that cannot be searched."""
        if sort not in SORT_COLUMNS:
            raise ValueError(f"cannot sort tasks by {sort!r}; sortable: {', '.join(SORT_COLUMNS)}")
        where = []
        if status:
            where.append(tasks.c.status == str(status))
        if task_type:
            where.append(tasks.c.task_type == str(task_type))
        down = order == "newest" if descending is None else descending
        if finished_after is not None:
            if sort != "id":
                raise ValueError("finished_after orders by finish time; it takes no other sort")
            where.append(tasks.c.finished_at > finished_after)
            ordering = [c.desc() if down else c.asc() for c in (tasks.c.finished_at, tasks.c.id)]
        else:
            ordering = _sort_order(sort, down)
        first_ids: sa.Select[tuple[int]] | None = None
        if search is None:
            page = sa.select(tasks).where(*where).order_by(*ordering)
            counted = sa.select(sa.func.count()).select_from(tasks).where(*where)
        elif self._pg or finished_after is not None or sort != "id":
            matching = [*where, search_condition(self._pg, search)]
            page = sa.select(tasks).where(*matching).order_by(*ordering)
            counted = _count_capped(sa.select(tasks.c.id).where(*matching))
        else:  # SQLite, newest or oldest first: FTS5 reads its matches in id order and stops at the page's end
            match = fts5_match(search)
            rowid = FTS_TABLE.c.rowid
            page = (sa.select(tasks).select_from(FTS_TABLE.join(tasks, tasks.c.id == rowid))
                    .where(match, *where).order_by(rowid.desc() if down else rowid.asc()))
            counted = _count_capped(sa.select(rowid).where(match) if not where
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

        return read_retrying(self.engine, read)

    def count(self) -> dict[str, Any]:
        """{"total": n, "by_status": {status: n}} with every status present.

        Counting scans the status index, which grows with the store; dashboards poll it, so the answer is reused
        until this store changes a task's status, another replica's notification says it made work, or
        ``count_cache_seconds`` pass (the bound on staleness for other writes made through other processes)."""
        generation, now = self._writes, time.monotonic()
        cached = self._count_cache
        if cached and cached[0] == generation and now - cached[1] < self.count_cache_seconds:
            return {"total": cached[2]["total"], "by_status": dict(cached[2]["by_status"])}
        query = sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status)
        with self.engine.connect() as conn:
            found = {status: int(n) for status, n in conn.execute(query)}
        by_status = {status.value: found.get(status.value, 0) for status in TaskStatus}
        result = {"total": sum(found.values()), "by_status": by_status}
        self._count_cache = (generation, now, result)
        return {"total": result["total"], "by_status": dict(by_status)}

    # --- writes ---------------------------------------------------------------------------------------------
    def create(self, **fields: Any) -> dict[str, Any]:
        """Add a pending task (see ``create_or_replay`` for the fields)."""
        return self.create_or_replay(**fields)[0]

    def create_or_replay(self, **fields: Any) -> tuple[dict[str, Any], bool]:
        """Add a pending task; returns (task, created). See ``create_many`` for the fields and the key's rules."""
        return self.create_many([fields])[0]

    def create_many(self, items: Rows) -> Outcomes:
        """Add pending tasks in one transaction; returns (task, created) for each item, in order.

        Each item holds ``direction`` and ``task_type`` and may hold ``command``, ``priority``, ``max_attempts``,
        ``timeout_seconds``, ``context`` and ``idempotency_key``. With a key, a repeated create (a client retrying
        after a lost response) returns the task the first one made, with created False; the same key with another
        direction, type or command is a Conflict and nothing of the batch is written."""
        if not 1 <= len(items) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1..{MAX_BATCH} tasks, not {len(items)}")
        now = utcnow()
        rows = [self._new_task(now, **item) for item in items]
        for last_try in (False, True):
            try:
                with self._write() as conn:
                    return self._create_in(conn, rows)
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
            "idempotency_key": idempotency_key,
            "created_at": now,
            "updated_at": now,
        }

    def _create_in(self, conn: sa.Connection, rows: Rows) -> Outcomes:
        """Replays from the keys already stored (one look-up for the batch), then one multi-row INSERT."""
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
                _same_create(key, stored[key], row, f"task {stored[key]['id']}")
                plan.append(("stored", stored[key]))
            elif key in first_of_key:
                _same_create(key, fresh[first_of_key[key]], row, "an earlier item of this batch")
                plan.append(("again", first_of_key[key]))
            else:
                if key is not None:
                    first_of_key[key] = len(fresh)
                plan.append(("fresh", len(fresh)))
                fresh.append(row)
        made = [dict(r._mapping) for r in conn.execute(_INSERT_TASKS, fresh)] if fresh else []
        if made:
            self._wake(conn)
        return [
            (what, False) if how == "stored" else (made[what], how == "fresh")
            for how, what in plan
        ]

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
        """Claim up to ``max_tasks`` of the most urgent pending tasks for ``runner_id`` in one statement, most
        urgent first; each gets its own claim token. A retried ``request_id`` returns what that claim got.

        On SQLite a read first: finding nothing costs no write transaction (the file stays untouched). On PostgreSQL
        the UPDATE ... SKIP LOCKED is itself one transaction, as cheap as the read would be."""
        if not 1 <= max_tasks <= MAX_CLAIM:
            raise ValueError(f"max_tasks must be 1..{MAX_CLAIM}")
        if not self._pg:
            type_list = [str(t) for t in types or []]
            params: dict[str, Any] = {"b_request": request_id, "b_runner": runner_id}
            if type_list:
                params["b_types"] = type_list
            with self.engine.connect() as conn:
                if conn.execute(_claimable_statement(bool(type_list)), params).first() is None:
                    if request_id is None or not replay:
                        return []
                    return [dict(r._mapping) for r in conn.execute(_CLAIMED_BY_REQUEST, params)]
        with self._write() as conn:
            now = self._lease_clock(conn)
            return self._claim_in(conn, now, runner_id, max_tasks, types, lease_seconds, request_id, replay)

    def _claim_in(
        self,
        conn: sa.Connection,
        now: datetime,
        runner_id: str,
        max_tasks: int,
        types: Iterable[str] | None,
        lease_seconds: float | None,
        request_id: str | None,
        replay: bool,
    ) -> Rows:
        """The claim inside the caller's transaction. Only a claim that took nothing looks for what its request id
        got before (a retry after a lost response): the UPDATE itself refuses to claim for a request that has."""
        replayable = request_id is not None and replay
        type_list = [str(t) for t in types or []]
        params: dict[str, Any] = {
            "b_runner": runner_id,
            "b_request": request_id,
            "b_now": now,
            "b_lease": now + timedelta(seconds=lease_seconds or self.lease_seconds),
        }
        if type_list:
            params["b_types"] = type_list
        if max_tasks > 1:
            params["b_limit"] = max_tasks
        statement = _claim_statement(bool(type_list), self._pg, max_tasks > 1, replayable)
        claimed = [dict(r._mapping) for r in conn.execute(statement, params)]
        if claimed:
            self._changed(conn)
        elif replayable:
            claimed = [dict(r._mapping) for r in conn.execute(_CLAIMED_BY_REQUEST, params)]
        return sorted(claimed, key=_claim_order)

    def heartbeat(
        self,
        task_id: int,
        claim_token: int,
        *,
        progress_pct: float | None = None,
        current_step: str | None = None,
        lease_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Extend the lease of a running task (and record progress); only the current claim may do so."""
        with self._write() as conn:
            now = self._lease_clock(conn)
            values: dict[str, Any] = {
                "lease_expires_at": now + timedelta(seconds=lease_seconds or self.lease_seconds),
                "updated_at": now,
            }
            if progress_pct is not None:
                values["progress_pct"] = progress_pct
            if current_step is not None:
                values["current_step"] = current_step
            return self._update_in(conn, task_id, TaskStatus.RUNNING, values, "heartbeat", claim_token)

    def finish(
        self,
        task_id: int,
        claim_token: int,
        *,
        status: str,
        output: str | None = None,
        exit_code: int | None = None,
        decision_prompt: str | None = None,
    ) -> dict[str, Any]:
        """End the current claim: completed, failed, needs_decision (with a question) or pending (released).

        A failure counts as an attempt; a question or a release does not. Finishing again with the same claim
        token and status (a retry after a lost response) returns the stored result."""
        status = self._finish_status(status, decision_prompt)
        with self._write() as conn:
            return self._finish_in(conn, utcnow(), task_id, claim_token, status, output, exit_code, decision_prompt)

    def finish_and_claim(
        self,
        task_id: int,
        claim_token: int,
        *,
        status: str,
        output: str | None = None,
        exit_code: int | None = None,
        decision_prompt: str | None = None,
        runner_id: str,
        types: Iterable[str] | None = None,
        lease_seconds: float | None = None,
        request_id: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``finish`` and then ``claim`` for the runner in one transaction: (finished task, next task or None).

        A finish that is refused (stale claim token, wrong status) claims nothing. Both halves are safe to retry:
        the finish by its claim token, the claim by its request id."""
        status = self._finish_status(status, decision_prompt)
        with self._write() as conn:
            now = self._lease_clock(conn)  # one moment: the next run starts when this one finished
            finished = self._finish_in(conn, now, task_id, claim_token, status, output, exit_code, decision_prompt)
            claimed = self._claim_in(conn, now, runner_id, 1, types, lease_seconds, request_id, True)
        return finished, (claimed[0] if claimed else None)

    @staticmethod
    def _finish_status(status: str, decision_prompt: str | None) -> TaskStatus:
        status = TaskStatus(status)
        if status not in FINISH_STATUSES:
            raise ValueError(f"status must be one of {', '.join(s.value for s in FINISH_STATUSES)}")
        if status is TaskStatus.NEEDS_DECISION and not decision_prompt:
            raise ValueError("needs_decision requires decision_prompt")
        return status

    def _finish_in(
        self,
        conn: sa.Connection,
        now: datetime,
        task_id: int,
        claim_token: int,
        status: TaskStatus,
        output: str | None,
        exit_code: int | None,
        decision_prompt: str | None,
    ) -> dict[str, Any]:
        values: dict[str, Any] = {"status": status.value, "lease_expires_at": None, "updated_at": now}
        if output is not None:
            values["output"] = self._tail(output)
        if exit_code is not None:
            values["exit_code"] = exit_code
        if status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            values["finished_at"] = now
        if status is TaskStatus.NEEDS_DECISION:
            values.update(decision_prompt=decision_prompt, decision=None, decided_by=None, decided_at=None)
        if status is TaskStatus.PENDING:
            values["claimed_by"] = None
        try:
            return self._update_in(conn, task_id, TaskStatus.RUNNING, values, "finish", claim_token,
                                   count_attempt=status is TaskStatus.FAILED)
        except Conflict:
            stored = _row(conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first())
            if stored is not None and stored["claim_token"] == claim_token and stored["status"] == status.value:
                return stored  # this very finish was already recorded
            raise

    def decide(self, task_id: int, decision: str, decided_by: str) -> dict[str, Any]:
        """Store a decision on a needs_decision task and return it to pending, so the next run sees it.

        The same decision by the same person again (a retry after a lost response) returns the task as it is."""
        now = utcnow()
        values = {
            "status": PENDING,
            "decision": decision,
            "decided_by": decided_by,
            "decided_at": now,
            "claimed_by": None,
            "updated_at": now,
        }
        try:
            return self._conditional_update(task_id, TaskStatus.NEEDS_DECISION, values, "decide")
        except Conflict:
            stored = self.get(task_id)
            if stored["decision"] == decision and stored["decided_by"] == decided_by:
                return stored
            raise

    def retry(self, task_id: int) -> dict[str, Any]:
        """Operator retry of a failed task: back to pending with a fresh set of attempts."""
        now = utcnow()
        values = {
            "status": PENDING,
            "attempts": 0,
            "claimed_by": None,
            "finished_at": None,
            "run_seconds": None,
            "queue_seconds": None,
            "exit_code": None,
            "updated_at": now,
        }
        return self._conditional_update(task_id, TaskStatus.FAILED, values, "retry")

    def ping(self) -> None:
        """Raise unless the store answers (the lease reaper's probe before it trusts leases again)."""
        read_retrying(self.engine, lambda conn: conn.execute(sa.text("SELECT 1")))

    def reap(self, now: datetime | None = None, *, max_lock_wait: float | None = None) -> ReapResult:
        """Return running tasks whose lease expired to pending, or fail them when their attempts are spent.

        An expired lease counts as an attempt (the run ended without a result). A pass that waited longer than
        ``max_lock_wait`` for the store's write lock requeues nothing (``waited`` says how long): the heartbeats
        that would have renewed those leases waited behind the same lock, and land once it is free."""
        with self._write() as conn:
            asked = time.monotonic()
            locked_at = self._lease_clock(conn)
            waited = time.monotonic() - asked
            if max_lock_wait is not None and waited > max_lock_wait:
                return ReapResult(waited=waited)
            now = now or locked_at
            expired = sa.and_(tasks.c.status == RUNNING, tasks.c.lease_expires_at < now)
            spent = tasks.c.attempts + 1 >= tasks.c.max_attempts
            common = {"lease_expires_at": None, "claimed_by": None, "updated_at": now,
                      "attempts": tasks.c.attempts + 1}
            failed = conn.execute(
                tasks.update()
                .where(expired, spent)
                .values(status=FAILED, finished_at=now, current_step="lease expired; attempts spent", **common,
                        **_durations(self._pg, sa.literal(now, UTCDateTime)))
            ).rowcount
            reclaimed = conn.execute(tasks.update().where(expired, ~spent).values(status=PENDING, **common)).rowcount
            if failed:
                self._changed(conn)
            if reclaimed:
                self._wake(conn)
        return ReapResult(reclaimed=reclaimed, failed=failed)

    # --- runner registry ------------------------------------------------------------------------------------
    def runner_heartbeat(
        self, runner_id: str, *, host: str, pid: int, version: str, info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._seen(runners.c.id, runner_id, {"host": host, "pid": pid, "version": version, "info": info})

    def runners(self) -> Rows:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(runners).order_by(runners.c.last_seen.desc()))]

    def prune_runners(self, seen_before: datetime, stopped_before: datetime | None = None) -> int:
        """Forget runners not seen since ``seen_before`` (restarts leave old ids behind), and those that said they
        stopped (info.stopped) before ``stopped_before``; a live one re-registers with its next heartbeat. Returns
        how many rows went."""
        stopped_before = stopped_before or seen_before
        with self.engine.connect() as conn:  # every status read asks: most find nothing, and write nothing
            old = conn.execute(sa.select(runners.c.id, runners.c.last_seen, runners.c.info)
                               .where(runners.c.last_seen < max(seen_before, stopped_before))).all()
        gone = [r.id for r in old if r.last_seen < seen_before
                or (r.last_seen < stopped_before and (r.info or {}).get("stopped"))]
        if not gone:
            return 0
        with self._write() as conn:
            return conn.execute(runners.delete().where(runners.c.id.in_(gone))).rowcount

    def component_heartbeat(
        self, name: str, *, host: str, pid: int, version: str, info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record that a component (e.g. the project manager) is alive, with a summary any API replica can show."""
        return self._seen(components.c.name, name, {"host": host, "pid": pid, "version": version, "info": info})

    def components(self) -> Rows:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(components).order_by(components.c.name))]

    def _seen(self, key: sa.Column[Any], key_value: str, values: dict[str, Any]) -> dict[str, Any]:
        """Upsert a registry row (runners, components): refresh ``last_seen``, set ``first_seen`` on insert."""
        table = key.table
        now = utcnow()
        values = {**values, "last_seen": now}
        with self._write() as conn:
            updated = conn.execute(table.update().where(key == key_value).values(**values)).rowcount
            if not updated:
                try:
                    with conn.begin_nested():
                        conn.execute(table.insert().values({key.name: key_value, "first_seen": now, **values}))
                except sa.exc.IntegrityError:  # another replica registered it first
                    conn.execute(table.update().where(key == key_value).values(**values))
            row = conn.execute(sa.select(table).where(key == key_value)).first()
        return dict(row._mapping)  # type: ignore[union-attr]

    # --- helpers --------------------------------------------------------------------------------------------
    def _tail(self, output: str) -> str:
        encoded = output.encode("utf-8", errors="replace")
        if len(encoded) <= self.tail_bytes:
            return output
        return encoded[-self.tail_bytes :].decode("utf-8", errors="ignore")

    def _conditional_update(
        self,
        task_id: int,
        needed: TaskStatus,
        values: dict[str, Any],
        action: str,
        claim_token: int | None = None,
    ) -> dict[str, Any]:
        """``_update_in`` in a transaction of its own."""
        with self._write() as conn:
            return self._update_in(conn, task_id, needed, values, action, claim_token)

    def _update_in(
        self,
        conn: sa.Connection,
        task_id: int,
        needed: TaskStatus,
        values: dict[str, Any],
        action: str,
        claim_token: int | None = None,
        *,
        count_attempt: bool = False,
    ) -> dict[str, Any]:
        """One UPDATE that applies only in status ``needed`` (and the current claim); the move must be legal.
        When it matches nothing, the row is read in the same transaction to say why (NotFound or Conflict)."""
        new = values.get("status")
        if new is not None and (needed, TaskStatus(new)) not in LEGAL_MOVES:
            raise ValueError(f"{needed.value} -> {new} is not a legal move")
        keys = tuple(sorted(values))
        statement = _update_statement(needed.value, claim_token is not None, keys, count_attempt, self._pg)
        params = {"b_id": task_id, "b_token": claim_token, **{f"v_{k}": values[k] for k in keys}}
        row = conn.execute(statement, params).first()
        if row is not None:
            if new == PENDING:
                self._wake(conn)
            elif new is not None:
                self._changed(conn)
            return dict(row._mapping)
        current = conn.execute(sa.select(tasks.c.status, tasks.c.claim_token).where(tasks.c.id == task_id)).first()
        if current is None:
            raise NotFound(f"task {task_id} not found")
        status, token = current
        if claim_token is not None and status == RUNNING and token != claim_token:
            raise Conflict(
                f"cannot {action} task {task_id}: claim token {claim_token} is stale (current claim {token}); "
                "the lease expired and the task was claimed again",
                status,
            )
        raise Conflict(
            f"cannot {action} task {task_id}: its status is {status}, {action} needs {needed.value}", status
        )
