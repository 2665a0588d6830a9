#!/usr/bin/env python3
"""Queue benchmark: N tasks created over HTTP, then K runner processes claim and finish them over HTTP.

Reports tasks/s, claim latency p50/p95 and the API's peak RSS for SQLite and PostgreSQL, and the latency of
GET /api/agent/tasks/count with a large store. Run by hand: `.venv/bin/python bench/queue_throughput.py` (see
bench/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the standard library's `queue`; keep its folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coherence_network.store.db import create_store_engine, migrate  # noqa: E402
from coherence_network.store.schema import tasks  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def output_text(seed: int, size: int) -> str:
    """About ``size`` characters of log-like text: varied words, as the search index sees real output."""
    rng = random.Random(seed)
    words: list[str] = []
    length = 0
    while length < size:
        word = f"{rng.choice(SYLLABLES)}{rng.choice(SYLLABLES)}{rng.randrange(1000) if rng.random() < 0.2 else ''}"
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


SYLLABLES = ("ka", "lo", "mi", "tes", "run", "pars", "er", "ok", "fail", "tra", "ce", "key", "io", "db", "net")


def runner_process(url: str, name: str, out: multiprocessing.Queue[list[float]], output_bytes: int) -> None:
    """Claim and finish (with ``output_bytes`` of output) until the queue is empty; send back each claim's latency
    in seconds."""
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        while True:
            started = time.perf_counter()
            claim = http.post("/api/agent/tasks/claim", json={"runner_id": name})
            latencies.append(time.perf_counter() - started)
            if claim.status_code == 204:
                break
            task = claim.json()
            output = output_text(task["id"], output_bytes) if output_bytes else None
            http.post(f"/api/agent/tasks/{task['id']}/finish",
                      json={"claim_token": task["claim_token"], "status": "completed", "exit_code": 0,
                            "output": output})
    out.put(latencies)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_queue(backend: str, url_env: dict[str, str], n: int, k: int, home: Path,
              output_bytes: int = 0) -> dict[str, object]:
    api = ApiProcess(home, env={**url_env, "COHERENCE_LOG_LEVEL": "WARNING"}).start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            created = time.perf_counter()
            for i in range(n):
                http.post("/api/agent/tasks", json={"direction": f"bench {i}", "task_type": "run", "command": "true"})
            create_rate = n / (time.perf_counter() - created)
        results: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
        workers = [multiprocessing.Process(target=runner_process, args=(api.url, f"bench-{i}", results, output_bytes))
                   for i in range(k)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        latencies = [x for _ in workers for x in results.get()]
        elapsed = time.perf_counter() - started
        for worker in workers:
            worker.join()
        assert api.proc is not None
        with httpx.Client(base_url=api.url) as http:
            done = http.get("/api/agent/tasks/count").json()["by_status"]["completed"]
        return {
            "backend": backend, "n": n, "k": k, "output_bytes": output_bytes, "completed": done,
            "create_per_s": round(create_rate, 1),
            "claim_finish_per_s": round(done / elapsed, 1),
            "claim_p50_ms": round(percentile(latencies, 50) * 1000, 2),
            "claim_p95_ms": round(percentile(latencies, 95) * 1000, 2),
            "api_peak_rss_mb": round(peak_rss_mb(api.proc.pid), 1),
        }
    finally:
        api.stop()


def run_count(backend: str, db_url: str, url_env: dict[str, str], rows: int, home: Path) -> dict[str, object]:
    """GET /api/agent/tasks/count latency with ``rows`` tasks stored (bulk-inserted straight into the store)."""
    engine = create_store_engine(db_url)
    migrate(engine)
    now = datetime.now(UTC)
    statuses = ["completed"] * 7 + ["failed", "pending", "running"]
    with engine.begin() as conn:
        for start in range(0, rows, 10_000):
            conn.execute(tasks.insert(), [
                {"direction": f"row {i}", "task_type": "run", "status": statuses[i % 10], "max_attempts": 3,
                 "created_at": now, "updated_at": now}
                for i in range(start, min(rows, start + 10_000))
            ])
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE tasks"))
    engine.dispose()
    api = ApiProcess(home, env={**url_env, "COHERENCE_LOG_LEVEL": "WARNING"}).start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            assert http.get("/api/agent/tasks/count").json()["total"] == rows
            samples = []
            for _ in range(200):
                started = time.perf_counter()
                http.get("/api/agent/tasks/count")
                samples.append(time.perf_counter() - started)
        return {"backend": backend, "rows": rows, "count_p50_ms": round(statistics.median(samples) * 1000, 2),
                "count_p95_ms": round(percentile(samples, 95) * 1000, 2)}
    finally:
        api.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="tasks per run")
    parser.add_argument("--runners", default="1,4,8", help="comma-separated K values")
    parser.add_argument("--count-rows", type=int, default=100_000, help="tasks stored for the count latency test")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--output-bytes", type=int, default=0, help="output each finish carries (0: none)")
    parser.add_argument("--skip-count", action="store_true", help="leave out the count latency test")
    args = parser.parse_args()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="coherence-bench-") as tmp:
        root = Path(tmp)
        postgres = PostgresServer(root / "pg").start() if "postgresql" in args.backends else None
        try:
            for backend in args.backends.split(","):
                for k in [int(x) for x in args.runners.split(",")]:
                    home = root / f"{backend}-{k}"
                    env = {"DATABASE_URL": postgres.new_database()} if backend == "postgresql" and postgres else {}
                    results.append(run_queue(backend, env, args.n, k, home, args.output_bytes))
                    print(json.dumps(results[-1]), flush=True)
                if args.skip_count:
                    continue
                home = root / f"{backend}-count"
                if backend == "postgresql" and postgres:
                    db_url = postgres.new_database()
                    env = {"DATABASE_URL": db_url}
                else:
                    db_url, env = f"sqlite:///{home / 'coherence.db'}", {}
                results.append(run_count(backend, db_url, env, args.count_rows, home))
                print(json.dumps(results[-1]), flush=True)
        finally:
            if postgres:
                postgres.stop()


if __name__ == "__main__":
    main()
