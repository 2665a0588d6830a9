"""The checks behind /api/ready: what makes this API replica unable to serve. The health rule store_not_ready reads
the same checks, so /api/ready, status, doctor, the console, /metrics and Telegram agree on a replica that is not
ready."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from coherence_network.settings import Settings
from coherence_network.store import TaskStore

READY_MIN_FREE_BYTES = 16 * 2**20  # below this, the SQLite store (its WAL) and the logs are about to fail writing
_PROBE_BYTES = 4096


def readiness_checks(settings: Settings, store: TaskStore) -> list[dict[str, Any]]:
    """Store reachable, migrations current, writes possible: each with its result."""
    return [*store.readiness(), writable(settings, store)]


def writable(settings: Settings, store: TaskStore) -> dict[str, object]:
    """Can the API write? A full disk or a read-only file system fails every write while the store still answers
    reads: free space (of COHERENCE_HOME and of the SQLite store's folder) against READY_MIN_FREE_BYTES, a
    PostgreSQL store that is read-only, and a real write of a few KiB to an unnamed file under var/run/ (nothing is
    left behind, whatever happens)."""
    folders = {"COHERENCE_HOME": settings.home}
    sqlite_folder = store.sqlite_folder()
    if sqlite_folder is not None:
        folders["the SQLite store"] = sqlite_folder
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
    if store.refuses_writes():
        problems.append("the PostgreSQL store takes no writes (transaction_read_only: a standby, or "
                        "default_transaction_read_only set)")
    try:
        with tempfile.TemporaryFile(dir=settings.run_dir) as probe:
            probe.write(b"\0" * _PROBE_BYTES)
            probe.flush()
    except OSError as exc:
        problems.append(f"cannot write under {settings.run_dir}: {exc.strerror or exc}")
    return {"name": "store_writable", "ok": not problems, "detail": "; ".join(problems) or "disk space and writes ok"}

