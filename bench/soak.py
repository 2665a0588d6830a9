#!/usr/bin/env python3
"""Growth soak: tasks created and run to completion for a while, with short retention, to see that the store and
var/ level off instead of growing with the history.

One `coherence api` and one `coherence runner` process (real tasks: the agent command reads its prompt file, so
each task leaves a task log and a prompt file) on a fresh COHERENCE_HOME; a loop keeps a few tasks pending. Every
``--sample`` seconds it prints one JSON line: tasks created so far, tasks in the store, the database's size (SQLite:
the file plus its -wal; PostgreSQL: pg_database_size) and the size of var/ without the database: task logs and
prompt files apart from the rest (component logs, which rotation bounds, and state files).
Run by hand: `.venv/bin/python bench/soak.py [--backend postgresql] [--duration 600]` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support

from coherence_network.file_retention import TASK_FILE  # noqa: E402
from coherence_network.store.db import create_store_engine  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

DIRECTION = "soak task: " + "lorem ipsum dolor sit amet " * 40  # about 1 KB per task row, log and prompt
PENDING_TARGET = 20  # the creator keeps about this many tasks waiting, so the runner never idles


def var_size(home: Path) -> dict[str, int]:
    """Bytes under COHERENCE_HOME without the SQLite database files (measured apart): the task logs and prompt files
    that retention removes, and the rest (component logs, bounded by rotation; state files); and the file count."""
    sizes = {"task_files_bytes": 0, "other_bytes": 0, "files": 0}
    for path in home.rglob("*"):
        if path.is_file() and not path.name.startswith("coherence.db"):
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # removed by a retention pass meanwhile
                continue
            sizes["task_files_bytes" if TASK_FILE.match(path.name) else "other_bytes"] += size
            sizes["files"] += 1
    return sizes


def database_size(engine: sa.Engine, home: Path) -> dict[str, int]:
    """SQLite: the database file and its -wal. PostgreSQL: the database, the tasks table with its indexes and TOAST,
    its dead row versions and how often autovacuum has run on it (what decides whether deleted space is reused)."""
    if engine.dialect.name != "postgresql":
        return {"db_bytes": sum(path.stat().st_size for path in home.glob("coherence.db*")
                                if path.name != "coherence.db.migrate.lock")}
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT pg_database_size(current_database()), pg_total_relation_size('tasks'), n_dead_tup, "
            "autovacuum_count FROM pg_stat_user_tables WHERE relname = 'tasks'")).one()
    return dict(zip(("db_bytes", "tasks_table_bytes", "dead_rows", "autovacuums"), map(int, row)))


def soak(home: Path, database_url: str, args: argparse.Namespace) -> list[dict[str, object]]:
    retention = {
        "DATABASE_URL": database_url,
        "COHERENCE_RETAIN_TASKS_DAYS": str(args.retain_seconds / 86400),
        "COHERENCE_RETAIN_RESOLUTIONS_DAYS": str(args.retain_seconds / 86400),
        "COHERENCE_PRUNE_INTERVAL_SECONDS": str(args.prune_interval),
        "COHERENCE_RUNNER_HEARTBEAT_SECONDS": str(args.prune_interval),  # the runner prunes in its heartbeat loop
        "COHERENCE_LOG_LEVEL": "INFO",
    }
    api = ApiProcess(home, env=retention).start()
    agent = f"{sys.executable} -c \"import sys; print(open(sys.argv[1]).read())\" {{prompt_file}}"
    runner = subprocess.Popen(  # its output goes to agent_runner.log; a pipe nobody reads would stall it
        [sys.executable, "-m", "coherence_network.cli", "runner", "--workers", "2", "--interval", "0.2"],
        env={**os.environ, **retention, "COHERENCE_HOME": str(home), "AGENT_API_BASE": api.url,
             "COHERENCE_WORKSPACE": str(home.parent), "COHERENCE_AGENT_COMMAND": agent},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    engine = create_store_engine(database_url or f"sqlite:///{home / 'coherence.db'}")
    samples: list[dict[str, object]] = []
    created = 0
    started = time.monotonic()
    next_sample = started
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    counts = http.get("/api/agent/tasks/count").json()
                    sample = {"minute": round((now - started) / 60, 1), "created": created,
                              "stored": counts["total"], **database_size(engine, home), **var_size(home)}
                    samples.append(sample)
                    print(json.dumps(sample), flush=True)
                    next_sample += args.sample
                    if now - started >= args.duration:
                        break
                pending = http.get("/api/agent/tasks/count").json()["by_status"].get("pending", 0)
                for _ in range(max(0, PENDING_TARGET - pending)):
                    http.post("/api/agent/tasks", json={"direction": f"{DIRECTION} {created}", "task_type": "spec"})
                    created += 1
                time.sleep(0.2)
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        runner.wait(60)
        api.stop()
        engine.dispose()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--duration", type=float, default=600, help="seconds to run (default 10 minutes)")
    parser.add_argument("--sample", type=float, default=60, help="seconds between samples")
    parser.add_argument("--retain-seconds", type=float, default=60, help="retention of finished tasks and files")
    parser.add_argument("--prune-interval", type=float, default=10, help="COHERENCE_PRUNE_INTERVAL_SECONDS")
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it, to look at afterwards")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coherence-soak-") as tmp:
        root = args.keep or Path(tmp)
        postgres = PostgresServer(root / "pg").start() if args.backend == "postgresql" else None
        try:
            samples = soak(root / "home", postgres.new_database() if postgres else "", args)
        finally:
            if postgres is not None:
                postgres.stop()
    half = [s for s in samples if float(s["minute"]) >= float(samples[-1]["minute"]) / 2]  # type: ignore[arg-type]
    print(json.dumps({"backend": args.backend, "created": samples[-1]["created"], **{
        f"{key}_second_half": [min(s[key] for s in half), max(s[key] for s in half)]  # type: ignore[type-var]
        for key in ("stored", "db_bytes", "task_files_bytes", "other_bytes")}}))


if __name__ == "__main__":
    main()
