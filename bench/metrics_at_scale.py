#!/usr/bin/env python3
"""/api/agent/metrics and /api/agent/pipeline-status at 100,000 stored tasks, over HTTP, on SQLite and PostgreSQL.

The store is filled straight through SQL with bench/pipeline_status.py's history (one task finished every
``--spacing`` seconds ending now, 90 % completed, ``--pending`` pending, a few running and waiting on top), with the
durations a finish stores, and the hourly rollup built by its revision (0016) as an upgrade builds it, timed at
this size. One `coherence api` process then answers each endpoint ``--repeat`` times; p50
and p95 in milliseconds, one JSON line per store and endpoint.
Run by hand: `.venv/bin/python bench/metrics_at_scale.py [--postgres]` (see bench/README.md). Goal: p50 under 20 ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support

import httpx

from bench.pipeline_status import HISTORY_API_ENV, fill, latency
from tests.support.api import ApiProcess
from tests.support.postgres import PostgresServer

ENDPOINTS = ("/api/agent/metrics", "/api/agent/pipeline-status")


def measure(url: str, home: Path, tasks_n: int, spacing: float, repeat: int,
            pending: int) -> list[dict[str, object]]:
    upgrade_s = round(fill(url, tasks_n, spacing, pending=pending), 2)
    api = ApiProcess(home, env={**HISTORY_API_ENV, "DATABASE_URL": url}).start()
    try:
        with httpx.Client(base_url=api.url, timeout=60) as http:
            return [{"store": url.split(":")[0].split("+")[0], "tasks": tasks_n, "spacing_s": spacing,
                     "pending": pending, "rollup_upgrade_s": upgrade_s, "endpoint": path,
                     **latency(http, path, repeat)} for path in ENDPOINTS]
    finally:
        api.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--spacing", type=float, default=300.0, help="Seconds between finished tasks (0: all recent)")
    parser.add_argument("--repeat", type=int, default=200, help="Requests per endpoint")
    parser.add_argument("--pending", type=int, default=20, help="Tasks left pending (the rest finished)")
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL server")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    server = PostgresServer(folder / "pg").start() if args.postgres else None
    try:
        stores = {"sqlite": f"sqlite:///{folder / 'sqlite' / 'coherence.db'}"}
        if server is not None:
            stores["postgresql"] = server.new_database()
        for name, url in stores.items():
            for line in measure(url, folder / name / "home", args.tasks, args.spacing, args.repeat,
                                args.pending):
                print(json.dumps(line), flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
