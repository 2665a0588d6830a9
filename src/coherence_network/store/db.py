"""Engine creation for both backends, and schema migrations with Alembic."""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from coherence_network.setting_values import database_url_refusal, mask_url_secrets
from coherence_network.settings import ConfigError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
PG_CONNECT_TIMEOUT_SECONDS = 10  # libpq's connect_timeout, per host tried
_PG_MIGRATION_LOCK = 7_311_001  # advisory lock id: one replica migrates at a time
# The graph tables first shipped as revision 0002 (commit 5e99590, chain 0001 -> 0002 -> 0003 -> 0004), then were
# renumbered 0005 (f80794a). A store that ran the old chain records 0002, 0003 or 0004 yet already has them.
_GRAPH_TABLES = frozenset({"projects", "dependencies", "index_frontier"})
_RENUMBERED_GRAPH = "0005"
_BEFORE_GRAPH = ("0001", "0002", "0003", "0004")

log = logging.getLogger(__name__)
T = TypeVar("T")


def create_store_engine(url: str) -> Engine:
    """An engine tuned for the backend: SQLite in WAL mode with a busy timeout, PostgreSQL with a pool.

    A URL that names no usable database is a ConfigError naming DATABASE_URL (its password hidden)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise sa.exc.ArgumentError(f"{parsed.get_backend_name()} is not a supported store")
    except (sa.exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise ConfigError(database_url_refusal(url, str(exc))) from exc
    if url.startswith("sqlite"):
        db_path = parsed.database
        if db_path and db_path != ":memory:":
            try:
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"the SQLite store {db_path}: cannot create its folder: {exc.strerror}") from exc
            # It holds task output: owner only, whatever the umask. SQLite gives its -wal and -shm files the
            # database file's mode.
            with suppress(FileExistsError):
                os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return _sqlite_engine(url, busy_seconds=30, pool_size=20, max_overflow=20)
    # No pre-ping: it costs a round trip on every checkout. A connection the server dropped (a restart) is found out
    # by its first statement instead: SQLAlchemy then discards every pooled connection made before, busy reads run
    # once more (``read_retrying``), and anything else answers 503, which clients retry when it is safe.
    # A host that drops packets would otherwise hold a connect for the kernel's SYN retries (about 2 minutes): a
    # command says "cannot be used" within this, unless the URL sets its own ?connect_timeout=.
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": PG_CONNECT_TIMEOUT_SECONDS}
    return sa.create_engine(url, pool_size=20, max_overflow=20, connect_args=connect_args)


def _sqlite_engine(url: str | sa.URL, *, busy_seconds: int, pool_size: int, max_overflow: int) -> Engine:
    """An engine on a SQLite file in WAL mode, durable across process crashes (fsync at checkpoints), whose
    connections wait up to ``busy_seconds`` for another writer's lock."""
    engine = sa.create_engine(url, connect_args={"timeout": busy_seconds}, pool_size=pool_size,
                              max_overflow=max_overflow)

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_seconds * 1000}")
        cursor.close()

    return engine


def nowait_engine(engine: Engine) -> Engine | None:
    """For a SQLite file, an engine on the same file whose connections never wait for the write lock (busy timeout
    0): the API runs its hot writes with it on the event loop, with no hop to a thread, and gives a write that would
    have waited to a thread instead (``StoreCore.without_waiting``). None for PostgreSQL and an in-memory store.
    A few connections: the event loop uses one at a time."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return None
    return _sqlite_engine(engine.url, busy_seconds=0, pool_size=1, max_overflow=2)


def is_busy(exc: sa.exc.DBAPIError) -> bool:
    """SQLite refused because another connection holds a lock it needs (SQLITE_BUSY or SQLITE_LOCKED, any
    extended code): nothing of the statement was done."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def read_retrying(engine: Engine, read: Callable[[sa.Connection], T]) -> T:
    """Run a read on a pooled connection, once more on a fresh one if the server had dropped the first (a read is
    safe to repeat), so a restarted server costs the first reader nothing."""
    try:
        with engine.connect() as conn:
            return read(conn)
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with engine.connect() as conn:
        return read(conn)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def head_revision(engine: Engine) -> str | None:
    """The newest revision of this code's migration scripts (the same for every engine)."""
    return _scripts_head()


@functools.cache
def _scripts_head() -> str | None:
    """Read once: the scripts do not change while the code runs, and /api/ready, pipeline-status and /metrics all
    ask (reading them costs about 3 ms)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine) -> tuple[str | None, str | None]:
    """Upgrade the schema to the newest revision; returns (before, after). Existing rows are kept.

    One migrator at a time per store (workers and replicas all migrate at start-up), and stores that ran the
    renumbered graph chain are bridged onto today's chain first.
    """
    with _migration_lock(engine):
        before = current_revision(engine)
        config = alembic_config(engine)
        _bridge_renumbered_graph(engine, config, before)
        command.upgrade(config, "head")
        return before, current_revision(engine)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """PostgreSQL: an advisory lock. SQLite: flock on ``<db>.migrate.lock`` next to the database file, because
    SQLite runs DDL outside a transaction and two workers upgrading a fresh store would both create its tables.
    The kernel releases a flock when its holder dies, so a killed migrator never blocks the next one."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield  # an in-memory database is private to its process: nobody to race with
        return
    with open(os.open(f"{database}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)) as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _bridge_renumbered_graph(engine: Engine, config: Config, revision: str | None) -> None:
    """Put a store that ran the old graph chain (graph tables as 0002) onto today's chain, by what it really has.

    Its recorded revision alone cannot tell it from a store that never had the graph tables (both may say 0004),
    so the tables decide: any revision before 0005 with the graph tables present means the old 0002 ran. Such a
    store gets the revisions it lacks up to 0004 (0003 and 0004 never touch the graph tables) and is then
    stamped 0005, whose only effect, the graph tables, it already has. The old 0002 id is unknown to today's
    chain, so it is first replaced (stamp with purge) by 0001, the revision it followed.
    """
    if revision not in _BEFORE_GRAPH:
        return
    present = _GRAPH_TABLES & set(sa.inspect(engine).get_table_names())
    if not present:
        return
    if present != _GRAPH_TABLES:
        raise RuntimeError(
            f"store at revision {revision} has only some graph tables ({sorted(present)}); "
            "it matches no known schema history: restore it from a backup or repair it by hand"
        )
    log.warning("store at %s already has the graph tables (renumbered chain): bridging it to %s",
                revision, _RENUMBERED_GRAPH)
    if revision == "0002":
        command.stamp(config, "0001", purge=True)
    command.upgrade(config, _BEFORE_GRAPH[-1])
    command.stamp(config, _RENUMBERED_GRAPH)


@contextmanager
def store_errors_as_config(engine: Engine) -> Iterator[None]:
    """Around a command's first use of the store: a store that cannot be reached, or refuses us, is a ConfigError
    naming DATABASE_URL (its password hidden) and the cause in one line, not a traceback."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        cause = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0][:300]
        shown = mask_url_secrets(engine.url.render_as_string(hide_password=False))
        raise ConfigError(f"the store at DATABASE_URL={shown} cannot be used: {cause}") from exc


def check_store(engine: Engine, *, upgrade: bool) -> None:
    """Before serving: the store answers and (with ``upgrade``) its schema is migrated to head, else a ConfigError
    (store_errors_as_config), so the API stops at once instead of serving errors."""
    with store_errors_as_config(engine):
        if upgrade:
            migrate(engine)
        else:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))


def readiness(engine: Engine) -> list[dict[str, object]]:
    """Checks behind /api/ready: the store answers, and its schema is at the newest revision."""
    checks: list[dict[str, object]] = []
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            revision = MigrationContext.configure(conn).get_current_revision()
        checks.append({"name": "store_reachable", "ok": True, "detail": engine.dialect.name})
    except Exception as exc:  # any driver error means "not reachable"; the reason is reported
        checks.append({"name": "store_reachable", "ok": False, "detail": f"{type(exc).__name__}: {exc}"[:500]})
        checks.append({"name": "migrations_current", "ok": False, "detail": "store unreachable"})
        return checks
    head = head_revision(engine)
    checks.append(
        {
            "name": "migrations_current",
            "ok": revision == head,
            "detail": f"at {revision}, head {head}" + ("" if revision == head else "; run `coherence migrate`"),
        }
    )
    return checks
