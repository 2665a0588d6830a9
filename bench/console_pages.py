#!/usr/bin/env python3
"""Console page render times with 100,000 tasks stored, on SQLite and PostgreSQL, over HTTP on loopback.

The store is filled the way bench/pipeline_status.py fills it (history at a steady rate, a few pending, running and
waiting tasks on top), with directions and outputs of words drawn from a vocabulary with a long tail (a few words
in many tasks, most in few), plus a graph of ``--projects`` packages whose first one every other package depends on
(the worst dependents page). Before serving, the search index is dropped and built again by its revision (0009), to
time that upgrade at this size. One `coherence api` process then serves each console page ``--repeat`` times,
task searches and sorted lists included. The figure is the whole request seen by the client on loopback, so it
bounds the server's time from above.
Run by hand: `.venv/bin/python bench/console_pages.py` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support

import sqlalchemy as sa  # noqa: E402
from alembic import command  # noqa: E402

from bench.pipeline_status import HISTORY_API_ENV, fill, latency  # noqa: E402
from coherence_network.store.db import alembic_config, create_store_engine, migrate  # noqa: E402
from coherence_network.store.graph import Dependency, GraphStore, PackageRecord  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

HUB = "hub-package"
SYLLABLES = ("ka", "lo", "mi", "tes", "run", "pars", "er", "ok", "ba", "tra", "ce", "dul", "io", "ven", "sor")
# Pseudo-words ranked by frequency (Zipf): VOCABULARY[0] is in about a third of the tasks, most in a few dozen.
VOCABULARY = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES]
WEIGHTS = [1 / (rank + 1) for rank in range(len(VOCABULARY))]
OUTPUT_WORDS = 80  # about 600 characters of output per finished task


def describe(i: int, status: str) -> tuple[str, str]:
    """Task i's direction (a ticket number shared by 10 tasks, then words) and output (words; failures add a
    traceback line, so "traceback" is in the failed tenth)."""
    rng = random.Random(i)
    direction = f"ticket{i % 10_000} " + " ".join(rng.choices(VOCABULARY, WEIGHTS, k=8))
    output = " ".join(rng.choices(VOCABULARY, WEIGHTS, k=OUTPUT_WORDS))
    if status == "failed":
        output += "\nTraceback (most recent call last): KeyError"
    return direction, output


def fill_graph(url: str, n: int) -> None:
    """``n`` PyPI packages, each depending on HUB, saved in batches the way the indexer saves them."""
    engine = create_store_engine(url)
    graph = GraphStore(engine)
    records = [(PackageRecord(name=HUB, status="ok", version="1.0"), 0)]
    records += [
        (PackageRecord(name=f"package-{i}", status="ok", version="1.0",
                       dependencies=[Dependency(name=HUB, requirement=">=1", kind="runtime")]), 1)
        for i in range(n)
    ]
    for start in range(0, len(records), 1000):
        graph.save_batch("pypi", records[start:start + 1000])
    engine.dispose()


def rebuild_search_index(url: str) -> float:
    """Seconds revision 0009 takes to build the search and sort indexes over the stored tasks (dropped first)."""
    engine = create_store_engine(url)
    config = alembic_config(engine)
    command.downgrade(config, "0008")
    started = time.perf_counter()
    migrate(engine)
    elapsed = time.perf_counter() - started
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE tasks"))
    engine.dispose()
    return elapsed


def search_pages() -> dict[str, str]:
    """Task searches (how many match, roughly, in the name) and sorted lists."""
    common, mid, rare = VOCABULARY[0], VOCABULARY[40], VOCABULARY[3000]
    return {
        "search, one ticket (10 tasks)": "/tasks?q=ticket4242",
        f"search, rare word {rare}": f"/tasks?q={rare}",
        f"search, mid word {mid}": f"/tasks?q={mid}",
        f"search, common word {common}": f"/tasks?q={common}",
        "search, word only in output (failed tenth)": "/tasks?q=traceback",
        "search, two words": f"/tasks?q={mid}+{common}",
        "search, prefix (as typed)": f"/tasks?q={mid[:4]}",
        "search, in a status": "/tasks?q=traceback&status=failed",
        "search, sorted by priority": f"/tasks?q={mid}&sort=-priority",
        "search, hostile text": "/tasks?q=%22a%22+OR+NEAR%28b*+-c",
        "sorted by priority": "/tasks?sort=-priority",
        "sorted by created, oldest first": "/tasks?sort=created_at",
        "sorted by updated": "/tasks?sort=-updated_at",
        "sorted by type": "/tasks?sort=task_type",
        "sorted by attempts": "/tasks?sort=-attempts",
        "sorted by status": "/tasks?sort=status",
        "failed, sorted by updated": "/tasks?status=failed&sort=-updated_at",
        "run tasks, sorted by priority": "/tasks?task_type=run&sort=-priority",
    }


def pages(http: httpx.Client, tasks: int) -> dict[str, str]:
    """The console's pages, with the ids and names the filled store has."""
    waiting = http.get("/api/agent/tasks", params={"status": "needs_decision", "limit": 1}).json()["items"][0]["id"]
    return {
        "overview": "/",
        "overview, 7 d chart": "/?range=7d",
        "overview, 30 d chart": "/?range=30d",
        "tasks": "/tasks",
        "tasks, failed, page 50": "/tasks?status=failed&offset=2450",
        "task detail": f"/tasks/{tasks // 2}",
        "task waiting for a decision": f"/tasks/{waiting}",
        "decisions": "/decisions",
        "graph search": "/graph?q=package-9&ecosystem=pypi",
        "project (many dependents)": f"/graph/pypi/{HUB}",
        **search_pages(),
    }


def first_render(http: httpx.Client, path: str) -> dict[str, float]:
    """The page's first render (nothing reused yet) and its size, after making sure it is the page itself (200,
    HTML), not a redirect or an error."""
    started = time.perf_counter()
    answer = http.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 200 or not answer.headers["content-type"].startswith("text/html"):
        raise SystemExit(f"{path}: {answer.status_code} {answer.headers.get('content-type')}")
    return {"bytes": len(answer.content), "first_ms": round(elapsed, 2)}


def run(backend: str, url: str, env: dict[str, str], home: Path, args: argparse.Namespace) -> None:
    """Fill the store, time the search index's rebuild, then time every page."""
    fill(url, args.tasks, args.spacing, describe)
    fill_graph(url, args.projects)
    upgrade_s = rebuild_search_index(url)
    print(json.dumps({"backend": backend, "tasks": args.tasks, "search_index_upgrade_s": round(upgrade_s, 2)}),
          flush=True)
    api = ApiProcess(home, env={**HISTORY_API_ENV, **env}).start()
    try:
        with httpx.Client(base_url=api.url, timeout=60) as http:
            for name, path in pages(http, args.tasks).items():
                first = first_render(http, path)
                figures = latency(http, path, args.repeat)
                print(json.dumps({"backend": backend, "page": name, "path": path, "tasks": args.tasks,
                                  "projects": args.projects, "spacing_s": args.spacing, **first, **figures}),
                      flush=True)
    finally:
        api.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000, help="Stored tasks")
    parser.add_argument("--projects", type=int, default=20_000, help="Stored graph packages")
    parser.add_argument("--spacing", type=float, default=60.0, help="Seconds between finished tasks")
    parser.add_argument("--repeat", type=int, default=100, help="Requests per page")
    parser.add_argument("--backends", default="sqlite,postgresql", help="Stores, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        for backend in args.backends.split(","):
            home = Path(tmp) / backend / "home"
            if backend == "sqlite":
                url = f"sqlite:///{home / 'coherence.db'}"
                run(backend, url, {}, home, args)
                continue
            postgres = PostgresServer(Path(tmp) / "pg").start()
            try:
                url = postgres.new_database()
                run(backend, url, {"DATABASE_URL": url}, home, args)
            finally:
                postgres.stop()


if __name__ == "__main__":
    main()
