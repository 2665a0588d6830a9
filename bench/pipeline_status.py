#!/usr/bin/env python3
"""pipeline-status and metrics latency with 1,000 and 100,000 tasks stored (SQLite), over HTTP.

Rows are inserted directly with SQLAlchemy (fast), as history at a steady rate: one task finished every
``--spacing`` seconds, ending now, with a few pending, running and waiting tasks on top. Then one `coherence api`
process answers GET /api/agent/pipeline-status and GET /api/agent/metrics ``--repeat`` times each.
``--spacing 0`` puts every task inside the last hour (the worst case: the whole store in every window).
Run by hand: `.venv/bin/python bench/pipeline_status.py` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from alembic import command

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coherence_network.clock import utcnow  # noqa: E402
from coherence_network.store.db import alembic_config, create_store_engine, migrate  # noqa: E402
from coherence_network.store.schema import tasks  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402

TYPES = ("spec", "test", "impl", "review", "run")
# The API of a bench over filled history: quiet, and retention off, so the history is measured as filled.
HISTORY_API_ENV = {"COHERENCE_LOG_LEVEL": "WARNING", "COHERENCE_RETAIN_TASKS_DAYS": "0"}


def fill(url: str, n: int, spacing: float,
         describe: Callable[[int, str], tuple[str, str | None]] | None = None, pending: int = 20) -> float:
    """``n`` tasks: all but ``pending`` + 10 finished (90 % completed, with the durations the finish stores), one
    every ``spacing`` s; ``pending`` pending (created one every ``spacing`` s), 5 running, 5 waiting. The hourly
    rollup is then built by its revision, as an upgrade builds it: the seconds that took are returned.

    ``describe(i, status)`` gives task i's direction and output (default: a short direction, 200 bytes of output)."""
    engine = create_store_engine(url)
    migrate(engine)
    now = utcnow()
    rng = random.Random(7)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        unfinished = i >= n - pending - 10
        finished = now - timedelta(seconds=(n - i) * spacing if spacing else rng.uniform(0, 3600))
        run = rng.uniform(5, 900)
        started = finished - timedelta(seconds=run)
        created = started - timedelta(seconds=rng.uniform(0.05, 60))
        status = "completed" if rng.random() < 0.9 else "failed"
        if unfinished:
            status = ("pending", "running", "needs_decision")[0 if i < n - 10 else 1 if i < n - 5 else 2]
        direction, output = describe(i, status) if describe else (f"bench task {i}", "x" * 200)
        rows.append({
            "direction": direction, "task_type": TYPES[i % len(TYPES)], "status": status, "command": None,
            "created_at": created, "updated_at": now,
            "started_at": None if status == "pending" else started,
            "finished_at": finished if status in ("completed", "failed") else None,
            "run_seconds": run if status in ("completed", "failed") else None,  # as the finish stores them
            "queue_seconds": (started - created).total_seconds() if status in ("completed", "failed") else None,
            "output": output if status != "pending" else None, "exit_code": 0 if status == "completed" else None,
            "claimed_by": "bench-runner" if status == "running" else None,
            "decision_prompt": "go on?" if status == "needs_decision" else None,
        })
        if len(rows) == 5000:
            with engine.begin() as conn:
                conn.execute(tasks.insert(), rows)
            rows = []
    if rows:
        with engine.begin() as conn:
            conn.execute(tasks.insert(), rows)
    engine.dispose()
    return rebuild_rollup(url)


def rebuild_rollup(url: str) -> float:
    """Seconds the upgrade from revision 0015 takes, most of it 0016 building the hourly rollup from the stored tasks
    (dropped first), as an upgraded store does; on PostgreSQL then what autovacuum would do soon after a bulk load."""
    engine = create_store_engine(url)
    command.downgrade(alembic_config(engine), "0015")
    started = time.perf_counter()
    migrate(engine)
    elapsed = time.perf_counter() - started
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    return elapsed


def latency(http: httpx.Client, path: str, repeat: int) -> dict[str, float]:
    http.get(path).raise_for_status()  # warm up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        http.get(path).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000", help="Stored task counts, comma-separated")
    parser.add_argument("--spacing", type=float, default=300.0, help="Seconds between finished tasks (0: all recent)")
    parser.add_argument("--repeat", type=int, default=200, help="Requests per endpoint")
    args = parser.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
            home = Path(tmp) / "home"
            fill(f"sqlite:///{home / 'coherence.db'}", n, args.spacing)
            api = ApiProcess(home, env=HISTORY_API_ENV).start()
            try:
                with httpx.Client(base_url=api.url, timeout=60) as http:
                    for path in ("/api/agent/pipeline-status", "/api/agent/metrics"):
                        figures = latency(http, path, args.repeat)
                        print(json.dumps({"backend": "sqlite", "tasks": n, "spacing_s": args.spacing, "endpoint": path,
                                          **figures}), flush=True)
            finally:
                api.stop()


if __name__ == "__main__":
    main()
