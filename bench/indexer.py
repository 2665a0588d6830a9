#!/usr/bin/env python3
"""Indexer benchmark: `coherence index npm` against the fixture registry, and the store's cost per batch.

The fixture registry (tests/support/fixture_registry.py, no injected faults) runs in its own process; each run is
a fresh `coherence index npm --target N` process on SQLite, timed by its own summary, with its peak RSS from
wait4. The store series writes 200-package batches (5 edges each) straight into a GraphStore and reports the
time per batch as the graph grows. Run by hand: `.venv/bin/python bench/indexer.py` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coherence_network.store.db import create_store_engine, migrate  # noqa: E402
from coherence_network.store.graph import Dependency, GraphStore, PackageRecord  # noqa: E402
from tests.support.fixture_registry import FixtureRegistry  # noqa: E402


def serve(n: int, latency: float, conn: Connection) -> None:
    """The fixture registry in this process until the parent closes the pipe."""
    registry = FixtureRegistry(n, faults=False, latency=latency).start()
    conn.send(registry.npm_url)
    try:
        conn.recv()
    except EOFError:
        pass
    registry.stop()


def crawl(registry_url: str, target: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "COHERENCE_HOME": home}
        env.pop("DATABASE_URL", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "coherence_network.cli", "index", "npm", "--registry", registry_url, "--packages",
             "pkg-0", "--target", str(target), "--concurrency", str(concurrency), "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        summary = json.loads(out)
        return {"target": target, "concurrency": concurrency, "exit": proc.returncode,
                "indexed": summary["indexed"], "fetched": summary["indexed"] + summary["missing"] + summary["failed"],
                "seconds": summary["seconds"], "packages_per_second": summary["packages_per_second"],
                "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def store_growth(checkpoints: list[int], batch: int = 200) -> list[dict[str, float]]:
    """Milliseconds per batch of ``batch`` packages when the store already holds each checkpoint's count."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        engine = create_store_engine(f"sqlite:///{folder}/graph.db")
        migrate(engine)
        graph = GraphStore(engine)
        written = 0
        for checkpoint in checkpoints:
            timings = []
            while written < checkpoint + 5 * batch:
                records = [
                    (PackageRecord(f"p{written + k}", "ok", version="1.0.0", description="x" * 60, license="MIT",
                                   dependencies=[Dependency(f"p{(written + k) * 7 + d}", "^1.0.0", "runtime")
                                                 for d in range(5)]), 1)
                    for k in range(batch)
                ]
                started = time.perf_counter()
                graph.save_batch("npm", records)
                if written >= checkpoint:
                    timings.append((time.perf_counter() - started) * 1000)
                written += batch
            results.append({"projects_before": checkpoint, "ms_per_batch": round(sorted(timings)[len(timings) // 2], 1),
                            "us_per_package": round(sorted(timings)[len(timings) // 2] * 1000 / batch, 1)})
        engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="packages in the fixture graph and the --target")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated concurrency levels")
    parser.add_argument("--n-at-1", type=int, default=2_000, help="smaller target for concurrency 1 (slow)")
    parser.add_argument("--growth", default="0,10000,50000,100000", help="store sizes for the per-batch series")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="hold each registry answer this long")
    args = parser.parse_args()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(args.n, args.latency_ms / 1000, child), daemon=True)
    server.start()
    url = parent.recv()
    try:
        for level in (int(c) for c in args.concurrency.split(",")):
            target = args.n_at_1 if level == 1 else args.n
            row = crawl(url, target, level)
            print(json.dumps({"bench": "crawl", "latency_ms": args.latency_ms, **row}), flush=True)
    finally:
        parent.close()
        server.join(10)
    for row in store_growth([int(c) for c in args.growth.split(",")]):
        print(json.dumps({"bench": "store", **row}), flush=True)


if __name__ == "__main__":
    main()
