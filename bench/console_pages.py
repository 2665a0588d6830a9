#!/usr/bin/env python3
"""Console page render times with 100,000 tasks stored (SQLite), over HTTP on loopback.

The store is filled the way bench/pipeline_status.py fills it (history at a steady rate, a few pending, running and
waiting tasks on top) plus a graph of ``--projects`` packages whose first one every other package depends on (the
worst dependents page). One `coherence api` process then serves each console page ``--repeat`` times. The figure is
the whole request seen by the client on loopback, so it bounds the server's time from above.
Run by hand: `.venv/bin/python bench/console_pages.py` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline_status import HISTORY_API_ENV, fill, latency  # noqa: E402

from coherence_network.store.db import create_store_engine  # noqa: E402
from coherence_network.store.graph import Dependency, GraphStore, PackageRecord  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402

HUB = "hub-package"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000, help="Stored tasks")
    parser.add_argument("--projects", type=int, default=20_000, help="Stored graph packages")
    parser.add_argument("--spacing", type=float, default=60.0, help="Seconds between finished tasks")
    parser.add_argument("--repeat", type=int, default=100, help="Requests per page")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        home = Path(tmp) / "home"
        url = f"sqlite:///{home / 'coherence.db'}"
        fill(url, args.tasks, args.spacing)
        fill_graph(url, args.projects)
        api = ApiProcess(home, env=HISTORY_API_ENV).start()
        try:
            with httpx.Client(base_url=api.url, timeout=60) as http:
                for name, path in pages(http, args.tasks).items():
                    first = first_render(http, path)
                    figures = latency(http, path, args.repeat)
                    print(json.dumps({"page": name, "path": path, "tasks": args.tasks, "projects": args.projects,
                                      "spacing_s": args.spacing, **first, **figures}), flush=True)
        finally:
            api.stop()


if __name__ == "__main__":
    main()
