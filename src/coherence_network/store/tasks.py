"""TaskStore: every task operation as one short transaction, identical on SQLite and PostgreSQL.

State changes are single conditional UPDATEs (``WHERE status = ...``), so two writers can never both win; when the
UPDATE matches nothing the row is read to say why (404 or a conflict naming the current status).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from coherence_network.contract import FINISH_STATUSES, LEGAL_MOVES, TaskStatus
from coherence_network.store.errors import Conflict, NotFound
from coherence_network.store.notify import CHANNEL
from coherence_network.store.schema import UTCDateTime, components, runners, tasks

PENDING, RUNNING, FAILED = TaskStatus.PENDING.value, TaskStatus.RUNNING.value, TaskStatus.FAILED.value
# The fields that make a create the same create: a reused idempotency key with other values is a client bug.
_IDEMPOTENT_FIELDS = ("direction", "task_type", "command")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _row(row: sa.Row[Any] | None) -> dict[str, Any] | None:
    return None if row is None else dict(row._mapping)


_INSERT_TASK = tasks.insert().returning(*tasks.c)
_NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")
# Marks on the connection of the transaction in progress (``Connection.info``), read and cleared by ``_write``.
_CHANGED, _WOKE = "coherence_tasks_changed", "coherence_work_available"


def _pending(typed: bool) -> sa.Select[tuple[int]]:
    """Ids of claimable tasks (of the types bound as ``b_types`` when ``typed``)."""
    pick = sa.select(tasks.c.id).where(tasks.c.status == PENDING)
    if typed:
        pick = pick.where(tasks.c.task_type.in_(sa.bindparam("b_types", expanding=True)))
    return pick


@lru_cache(maxsize=None)
def _claimable_statement(typed: bool) -> sa.Select[tuple[int]]:
    """Is any task claimable? A read, so a claim that would find nothing opens no write transaction."""
    return _pending(typed).limit(1)


@lru_cache(maxsize=None)
def _claim_statement(typed: bool, postgres: bool) -> sa.Update:
    """Built once: statement construction costs more than SQLite's execution of it."""
    pick = _pending(typed).order_by(tasks.c.priority.desc(), tasks.c.id.asc()).limit(1)
    if postgres:
        pick = pick.with_for_update(skip_locked=True)
    return (
        tasks.update()
        .where(tasks.c.id == pick.scalar_subquery(), tasks.c.status == PENDING)
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
            updated_at=sa.bindparam("b_now", type_=UTCDateTime),
        )
        .returning(*tasks.c)
    )


_CLAIMED_BY_REQUEST = sa.select(tasks).where(
    tasks.c.claim_request_id == sa.bindparam("b_request"),
    tasks.c.claimed_by == sa.bindparam("b_runner"),
    tasks.c.status == RUNNING,
)


@lru_cache(maxsize=None)
def _update_statement(needed: str, fenced: bool, keys: tuple[str, ...], count_attempt: bool) -> sa.Update:
    """``UPDATE tasks SET <keys> WHERE id = ? AND status = <needed> [AND claim_token = ?]``, built once per shape.

    ``count_attempt`` adds one to ``attempts`` in the same statement (an attempt that ended in failure)."""
    condition = [tasks.c.id == sa.bindparam("b_id"), tasks.c.status == needed]
    if fenced:
        condition.append(tasks.c.claim_token == sa.bindparam("b_token"))
    values: dict[str, Any] = {key: sa.bindparam(f"v_{key}", type_=tasks.c[key].type) for key in keys}
    if count_attempt:
        values["attempts"] = tasks.c.attempts + 1
    return tasks.update().where(*condition).values(values).returning(*tasks.c)


@dataclass
class ReapResult:
    """Expired leases handled by one reaper pass."""

    reclaimed: int = 0
    failed: int = 0


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
        with self.engine.connect() as conn:
            row = _row(conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first())
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
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of tasks and the total that match the filter."""
        where = []
        if status:
            where.append(tasks.c.status == str(status))
        if task_type:
            where.append(tasks.c.task_type == str(task_type))
        ordering = tasks.c.id.desc() if order == "newest" else tasks.c.id.asc()
        query = sa.select(tasks).where(*where).order_by(ordering).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            items = [dict(r._mapping) for r in conn.execute(query)]
            total = conn.execute(sa.select(sa.func.count()).select_from(tasks).where(*where)).scalar_one()
        return items, int(total)

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

    def create_or_replay(
        self,
        *,
        direction: str,
        task_type: str,
        command: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        context: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Add a pending task; returns (task, created).

        With ``idempotency_key`` a repeated create (a client retrying after a lost response) returns the task the
        first one made, with created False; the same key with another direction, type or command is a Conflict."""
        now = utcnow()
        values = {
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
        if idempotency_key is not None:
            earlier = self._by_idempotency_key(idempotency_key, values)
            if earlier is not None:
                return earlier, False
        try:
            with self._write() as conn:
                row = conn.execute(_INSERT_TASK, values).first()
                self._wake(conn)
        except sa.exc.IntegrityError:
            earlier = self._by_idempotency_key(idempotency_key, values) if idempotency_key is not None else None
            if earlier is None:
                raise
            return earlier, False  # a concurrent retry of the same create won the insert
        return dict(row._mapping), True  # type: ignore[union-attr]

    def _by_idempotency_key(self, key: str, values: dict[str, Any]) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = _row(conn.execute(sa.select(tasks).where(tasks.c.idempotency_key == key)).first())
        if row is not None and any(row[f] != values[f] for f in _IDEMPOTENT_FIELDS):
            raise Conflict(
                f"idempotency key {key!r} was already used by task {row['id']} with a different direction, type or "
                "command; use a new key for a new task",
                row["status"],
            )
        return row

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
        skips that look-up (a long poll's rechecks within one request cannot have been answered yet).

        On SQLite a read first: finding nothing costs no write transaction (the file stays untouched). On PostgreSQL
        the UPDATE ... SKIP LOCKED is itself one transaction, as cheap as the read would be."""
        if request_id is not None and replay:
            with self.engine.connect() as conn:
                earlier = _row(conn.execute(_CLAIMED_BY_REQUEST, {"b_request": request_id, "b_runner": runner_id})
                               .first())
            if earlier is not None:
                return earlier
        now = utcnow()
        type_list = [str(t) for t in types or []]
        params: dict[str, Any] = {
            "b_runner": runner_id,
            "b_request": request_id,
            "b_now": now,
            "b_lease": now + timedelta(seconds=lease_seconds or self.lease_seconds),
        }
        if type_list:
            params["b_types"] = type_list
        if not self._pg:
            with self.engine.connect() as conn:
                if conn.execute(_claimable_statement(bool(type_list)), params).first() is None:
                    return None
        with self._write() as conn:
            claimed = _row(conn.execute(_claim_statement(bool(type_list), self._pg), params).first())
            if claimed is not None:
                self._changed(conn)
        return claimed

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
        now = utcnow()
        values: dict[str, Any] = {
            "lease_expires_at": now + timedelta(seconds=lease_seconds or self.lease_seconds),
            "updated_at": now,
        }
        if progress_pct is not None:
            values["progress_pct"] = progress_pct
        if current_step is not None:
            values["current_step"] = current_step
        return self._conditional_update(task_id, TaskStatus.RUNNING, values, "heartbeat", claim_token)

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
        status = TaskStatus(status)
        if status not in FINISH_STATUSES:
            raise ValueError(f"status must be one of {', '.join(s.value for s in FINISH_STATUSES)}")
        if status is TaskStatus.NEEDS_DECISION and not decision_prompt:
            raise ValueError("needs_decision requires decision_prompt")
        now = utcnow()
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
            return self._conditional_update(task_id, TaskStatus.RUNNING, values, "finish", claim_token,
                                            count_attempt=status is TaskStatus.FAILED)
        except Conflict:
            stored = self.get(task_id)
            if stored["claim_token"] == claim_token and stored["status"] == status.value:
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
            "exit_code": None,
            "updated_at": now,
        }
        return self._conditional_update(task_id, TaskStatus.FAILED, values, "retry")

    def reap(self, now: datetime | None = None) -> ReapResult:
        """Return running tasks whose lease expired to pending, or fail them when their attempts are spent.

        An expired lease counts as an attempt (the run ended without a result)."""
        now = now or utcnow()
        expired = sa.and_(tasks.c.status == RUNNING, tasks.c.lease_expires_at < now)
        spent = tasks.c.attempts + 1 >= tasks.c.max_attempts
        common = {"lease_expires_at": None, "claimed_by": None, "updated_at": now, "attempts": tasks.c.attempts + 1}
        with self._write() as conn:
            failed = conn.execute(
                tasks.update()
                .where(expired, spent)
                .values(status=FAILED, finished_at=now, current_step="lease expired; attempts spent", **common)
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

    def runners(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(runners).order_by(runners.c.last_seen.desc()))]

    def prune_runners(self, seen_before: datetime) -> int:
        """Forget runners not seen since ``seen_before`` (restarts leave old ids behind); a live one re-registers
        with its next heartbeat. Returns how many rows went."""
        gone = runners.c.last_seen < seen_before
        with self.engine.connect() as conn:  # every status read asks: most find nothing, and write nothing
            if conn.execute(sa.select(runners.c.id).where(gone).limit(1)).first() is None:
                return 0
        with self._write() as conn:
            return conn.execute(runners.delete().where(gone)).rowcount

    def component_heartbeat(
        self, name: str, *, host: str, pid: int, version: str, info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record that a component (e.g. the project manager) is alive, with a summary any API replica can show."""
        return self._seen(components.c.name, name, {"host": host, "pid": pid, "version": version, "info": info})

    def components(self) -> list[dict[str, Any]]:
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
        *,
        count_attempt: bool = False,
    ) -> dict[str, Any]:
        """One UPDATE that applies only in status ``needed`` (and the current claim); the move must be legal."""
        new = values.get("status")
        if new is not None and (needed, TaskStatus(new)) not in LEGAL_MOVES:
            raise ValueError(f"{needed.value} -> {new} is not a legal move")
        keys = tuple(sorted(values))
        statement = _update_statement(needed.value, claim_token is not None, keys, count_attempt)
        params = {"b_id": task_id, "b_token": claim_token, **{f"v_{k}": values[k] for k in keys}}
        with self._write() as conn:
            row = conn.execute(statement, params).first()
            if row is not None:
                if new == PENDING:
                    self._wake(conn)
                elif new is not None:
                    self._changed(conn)
                return dict(row._mapping)
            current = conn.execute(
                sa.select(tasks.c.status, tasks.c.claim_token).where(tasks.c.id == task_id)
            ).first()
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
