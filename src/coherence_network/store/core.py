"""The store's core: its engine (private to store/), the public transaction and read, and the store's own upkeep
(migrate, check, readiness, dispose, the PostgreSQL wake-up listener, the graph on the same database).

Every query of the project goes through a store object built on this class (store/gateway.py); nothing outside
store/ sees the engine, a connection it did not get from ``transaction()`` or ``connection()``, or SQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from coherence_network.clock import utcnow
from coherence_network.store import db
from coherence_network.store.graph import GraphStore
from coherence_network.store.notify import CHANNEL, WorkListener

T = TypeVar("T")
_NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")
_TAKE_WRITE_LOCK = sa.text("UPDATE tasks SET id = id WHERE 0")  # SQLite: the write lock, and not a row touched
_READ_ONLY = sa.text("SHOW transaction_read_only")
# Marks on the connection of the transaction in progress (``Connection.info``), read and cleared by ``transaction``.
_CHANGED, _WOKE = "coherence_tasks_changed", "coherence_work_available"
# Set while ``without_waiting`` runs a call: its transactions and reads use the engine that never waits for a lock.
_WITHOUT_WAITING: ContextVar[bool] = ContextVar("coherence_without_waiting", default=False)


class WouldWait(Exception):
    """Another connection holds SQLite's write lock: the call did nothing, and may be run again where waiting is
    fine (a thread)."""


class StoreCore:
    """One engine, its transactions and its upkeep; the task, registry, issue and figure queries build on it."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = 60.0,
        max_attempts: int = 3,
        tail_bytes: int = 8000,
        count_cache_seconds: float = 0.0,
    ):
        self._engine = engine
        self._nowait = db.nowait_engine(engine)  # SQLite file: the event loop's writes (without_waiting)
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.tail_bytes = tail_bytes
        self.count_cache_seconds = count_cache_seconds
        self._pg = engine.dialect.name == "postgresql"
        self._writes = 0  # bumped after each committed write that changed a task; invalidates what ``reused`` kept
        self._kept: dict[str, tuple[int, float, Any]] = {}  # ``reused``: key -> (writes then, when, answer)
        # Called (in the writing thread) after a commit that made a task claimable; the API wakes its waiters.
        self.on_work: Callable[[], None] | None = None
        # Names this store in its notifications, so a listener can tell another process's writes from its own.
        self.instance = uuid.uuid4().hex

    # --- transactions ---------------------------------------------------------------------------------------
    @property
    def answers_without_waiting(self) -> bool:
        """SQLite on a file: a call can be tried with ``without_waiting`` (on the event loop, no thread hop)."""
        return self._nowait is not None

    def without_waiting(self, call: Callable[[], T]) -> T:
        """Run ``call`` (a store method) with connections that never wait for SQLite's write lock; WouldWait when
        another writer holds it. Nothing of a refused call was written: the BUSY comes at the first write, which
        takes the lock or nothing, and a transaction that holds the lock commits without needing another (WAL)."""
        token = _WITHOUT_WAITING.set(True)
        try:
            return call()
        except sa.exc.OperationalError as exc:
            if db.is_busy(exc):
                raise WouldWait(str(exc.orig)) from exc
            raise
        finally:
            _WITHOUT_WAITING.reset(token)

    def _engine_now(self) -> Engine:
        """The engine this call uses: the one that never waits inside ``without_waiting``, else the pool's."""
        return self._nowait if self._nowait is not None and _WITHOUT_WAITING.get() else self._engine

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A write transaction. Statements in it mark what they did (``tasks_changed``, ``_wake``); after the
        commit a change invalidates the count cache and a wake calls ``on_work``. A rollback does neither."""
        with self._engine_now().connect() as conn:
            try:
                with conn.begin():
                    yield conn
            finally:
                marks = self._marks_of(conn)
        self._act_on(marks)

    @contextmanager
    def single_statement(self) -> Iterator[sa.Connection]:
        """``transaction`` for a move whose one write is one statement (a create, a heartbeat, a plain finish). On
        PostgreSQL the statement commits by itself (autocommit): no BEGIN and no COMMIT, a round trip each (issue
        23). A statement that ran is committed, so what it marked is acted on even if a later read fails. SQLite:
        ``transaction``."""
        if not self._pg:
            with self.transaction() as conn:
                yield conn
            return
        with self._engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                yield conn
            finally:
                self._act_on(self._marks_of(conn))

    @staticmethod
    def _marks_of(conn: sa.Connection) -> tuple[bool, bool]:
        """What the statements on ``conn`` marked (changed tasks, made work), cleared for its next user."""
        return bool(conn.info.pop(_CHANGED, False)), bool(conn.info.pop(_WOKE, False))

    def _act_on(self, marks: tuple[bool, bool]) -> None:
        """After a commit: a change invalidates the count cache, a wake calls ``on_work``."""
        changed, woke = marks
        if changed or woke:
            self._writes += 1
        if woke and self.on_work is not None:
            self.on_work()

    @contextmanager
    def connection(self) -> Iterator[sa.Connection]:
        """A connection for reads (several statements that belong together)."""
        with self._engine_now().connect() as conn:
            yield conn

    def _read(self, read: Callable[[sa.Connection], T]) -> T:
        """A read, once more on a fresh connection if the server had dropped the pooled one (db.read_retrying)."""
        return db.read_retrying(self._engine_now(), read)

    def _lease_clock(self, conn: sa.Connection) -> datetime:
        """The moment a lease granted in this transaction starts: once the transaction holds the store's write lock.

        On SQLite a writer waits (up to the busy timeout) for another writer's lock; a lease counted from before that
        wait could be spent, or nearly, when the claim is answered, and the runner, which counts the lease it was
        granted from the answer's arrival, would start a claim the reaper may already have handed to someone else.
        A statement that writes nothing takes SQLite's lock here; PostgreSQL's claim skips locked rows instead of
        waiting for them. On the event loop's connection (``without_waiting``) no write waits: the clock is right as
        it is, and the statement is spared."""
        if not self._pg and self._engine_now() is self._engine:  # not the connection that never waits
            conn.execute(_TAKE_WRITE_LOCK)
        return utcnow()

    def tasks_changed(self, conn: sa.Connection) -> None:
        """This transaction changed tasks (counts are stale once it commits)."""
        conn.info[_CHANGED] = True

    def _wake(self, conn: sa.Connection) -> None:
        """This transaction made a task claimable: waiting claims should look again once it commits.

        On PostgreSQL a NOTIFY in the same transaction tells every replica's listener; PostgreSQL delivers it only
        at commit (never on rollback), so no listener wakes before the row is visible."""
        self._woken(conn, sent=False)

    def _wake_params(self) -> dict[str, str]:
        """The parameters of a statement that sends the wake-up itself (statements.INSERT_ONE_TASK)."""
        return {"b_channel": CHANNEL, "b_payload": self.instance}

    def _woken(self, conn: sa.Connection, *, sent: bool) -> None:
        """``_wake``, where the transaction's own statement may have ``sent`` the PostgreSQL notification."""
        conn.info[_WOKE] = True
        if self._pg and not sent:
            conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": self.instance})

    def reused(self, key: str, read: Callable[[], T]) -> T:
        """``read()``'s answer under ``key``, reused until this store changes a task's status, another replica's
        notification says it made work, or ``count_cache_seconds`` pass (the bound on staleness for other writes
        made through other processes): for the reads that walk every task of a status, which dashboards poll."""
        writes, clock = self._writes, time.monotonic()
        kept = self._kept.get(key)
        if kept is not None and kept[0] == writes and clock - kept[1] < self.count_cache_seconds:
            answer: T = kept[2]
            return answer
        answer = read()
        self._kept[key] = (writes, clock, answer)
        return answer

    def invalidate_counts(self) -> None:
        """Another process changed tasks (a replica's notification): the next count reads the store."""
        self._writes += 1

    # --- upkeep ---------------------------------------------------------------------------------------------
    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return str(self._engine.dialect.name)

    def migrate(self) -> tuple[str | None, str | None]:
        """Upgrade the schema to the newest revision; (before, after). See db.migrate."""
        return db.migrate(self._engine)

    @contextmanager
    def errors_as_config(self) -> Iterator[None]:
        """A store that cannot be used: a ConfigError naming DATABASE_URL (db.store_errors_as_config)."""
        with db.store_errors_as_config(self._engine):
            yield

    def check(self, *, upgrade: bool) -> None:
        """Before serving: the store answers and (with ``upgrade``) is migrated, else a ConfigError (db.check_store)."""
        db.check_store(self._engine, upgrade=upgrade)

    def revision(self) -> str | None:
        """The schema revision the store is at (None: never migrated)."""
        return db.current_revision(self._engine)

    def at_head(self) -> bool:
        """Whether the store's schema is at this code's newest revision."""
        return self.revision() == db.head_revision(self._engine)

    def readiness(self) -> list[dict[str, object]]:
        """The store's checks behind /api/ready: reachable, migrations current (db.readiness)."""
        return db.readiness(self._engine)

    def sqlite_folder(self) -> Path | None:
        """The folder of a SQLite store's file (None for PostgreSQL or an in-memory store)."""
        database = self._engine.url.database
        if self.dialect != "sqlite" or database in (None, "", ":memory:"):
            return None
        return Path(str(database)).resolve().parent

    def refuses_writes(self) -> bool:
        """A PostgreSQL store that answers but takes no write (a standby after a failover,
        default_transaction_read_only set). Unreachable is not this check's to say: False."""
        if not self._pg:
            return False
        try:
            with self._engine.connect() as conn:
                return bool(conn.execute(_READ_ONLY).scalar() == "on")
        except sa.exc.SQLAlchemyError:
            return False

    def ping(self) -> None:
        """Raise unless the store answers (the lease reaper's probe before it trusts leases again)."""
        self._read(lambda conn: conn.execute(sa.text("SELECT 1")))

    def work_listener(self, on_notice: Callable[[str], None], on_connect: Callable[[], None]) -> WorkListener | None:
        """PostgreSQL: a started listener for other replicas' wake-ups (store/notify.py); SQLite: None (one host,
        one process's writes wake its own waiters)."""
        if not self._pg:
            return None
        return WorkListener(self._engine.url, on_notice, on_connect).start()

    def graph(self) -> GraphStore:
        """The dependency graph's store, on this store's database and pool."""
        return GraphStore(self._engine)

    def dispose(self) -> None:
        """Close the pool's connections (a process that is done with the store, or about to fork)."""
        self._engine.dispose()
        if self._nowait is not None:
            self._nowait.dispose()
