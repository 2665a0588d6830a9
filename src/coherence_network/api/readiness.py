"""The checks behind /api/ready: what makes this API replica unable to serve. The health rule store_not_ready reads
the same checks, so /api/ready, status, doctor, the console, /metrics and Telegram agree on a replica that is not
ready."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from coherence_network.settings import Settings
from coherence_network.store.db import readiness
from coherence_network.store.tasks import TaskStore

READY_MIN_FREE_BYTES = 16 * 2**20  # below this, the SQLite store (its WAL) and the logs are about to fail writing
_PROBE_BYTES = 4096


def readiness_checks(settings: Settings, store: TaskStore) -> list[dict[str, Any]]:
    """Store reachable, migrations current, writes possible: each with its result."""
    return [*readiness(store.engine), writable(settings, store.engine)]


def writable(settings: Settings, engine: Any) -> dict[str, object]:
    """Can the API write? A full disk or a read-only file system fails every write while the store still answers
    reads: free space (of COHERENCE_HOME and of the SQLite store's folder) against READY_MIN_FREE_BYTES, a
    PostgreSQL store that is read-only, and a real write of a few KiB to an unnamed file under var/run/ (nothing is
    left behind, whatever happens)."""
    folders = {"COHERENCE_HOME": settings.home}
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        folders["the SQLite store"] = Path(engine.url.database).resolve().parent
    problems: list[str] = []
    for what, folder in folders.items():
        try:
            fs = os.statvfs(folder)
        except OSError as exc:
            problems.append(f"{what} {folder}: {exc.strerror}")
            continue
        free = fs.f_bavail * fs.f_frsize
        if fs.f_flag & os.ST_RDONLY:
            problems.append(f"{what} {folder} is on a read-only file system")
        elif free < READY_MIN_FREE_BYTES:
            problems.append(f"{what} {folder}: {free} bytes free, below {READY_MIN_FREE_BYTES}")
    if engine.dialect.name == "postgresql":
        problems += _postgres_read_only(engine)
    try:
        with tempfile.TemporaryFile(dir=settings.run_dir) as probe:
            probe.write(b"\0" * _PROBE_BYTES)
            probe.flush()
    except OSError as exc:
        problems.append(f"cannot write under {settings.run_dir}: {exc.strerror or exc}")
    return {"name": "store_writable", "ok": not problems, "detail": "; ".join(problems) or "disk space and writes ok"}


def _postgres_read_only(engine: Any) -> list[str]:
    """A PostgreSQL store that answers but takes no write (a standby after a failover, default_transaction_read_only
    set): every write would fail while reads go on. Unreachable is store_reachable's to say."""
    try:
        with engine.connect() as conn:
            read_only = conn.execute(sa.text("SHOW transaction_read_only")).scalar() == "on"
    except sa.exc.SQLAlchemyError:
        return []
    return [("the PostgreSQL store takes no writes (transaction_read_only: a standby, or default_transaction_read_only "
            "set)")] if read_only else []
