"""Engine creation for both backends, and schema migrations with Alembic."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 7_311_001  # advisory lock id: one replica migrates at a time


def create_store_engine(url: str) -> Engine:
    """An engine tuned for the backend: SQLite in WAL mode with a busy timeout, PostgreSQL with a pool."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        db_path = sa.engine.make_url(url).database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30}, pool_size=20, max_overflow=20)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, fsync at checkpoints
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine) -> tuple[str | None, str | None]:
    """Upgrade the schema to the newest revision; returns (before, after). Existing rows are kept."""
    before = current_revision(engine)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            try:
                command.upgrade(alembic_config(engine), "head")
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
    else:
        command.upgrade(alembic_config(engine), "head")
    return before, current_revision(engine)


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
