#!/usr/bin/env python3
"""Database round trips per claim+finish cycle, counted on the engine, on SQLite and PostgreSQL.

What the API's store does for each task a runner handles, straight through TaskStore (no HTTP): the protocol a
runner used before issue 14 (a claim with a request id, then a finish: two calls) and, where the tree has it, the
one call that finishes a task and claims the next. A round trip is one exchange with the database as the driver
makes it: each statement, each COMMIT and ROLLBACK, on PostgreSQL each BEGIN (psycopg sends it as a command of its
own), and a ping per pool checkout when pre-ping is on. Counted with SQLAlchemy events.

It imports whatever tree is on PYTHONPATH, so the same script counts an older commit:
  `PYTHONPATH=src .venv/bin/python bench/round_trips.py [--postgres]` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":  # for tests.support; and not bench/, whose queue.py would shadow the standard library's
    sys.path[0] = str(ROOT)

from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine, migrate


class RoundTrips:
    """Counts the round trips an engine makes (see the module's docstring for what one is)."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        events = ["before_cursor_execute", "commit", "rollback"]
        if engine.dialect.name == "postgresql":
            events.append("begin")
        for name in events:
            sa.event.listen(engine, name, self._one)
        if engine.pool._pre_ping:
            sa.event.listen(engine.pool, "checkout", self._one)

    def _one(self, *_: Any, **__: Any) -> None:
        self.count += 1


def per_cycle(store: TaskStore, trips: RoundTrips, tasks: int, cycle: Callable[[int], None]) -> float:
    """Round trips per task for ``cycle`` (given the task's index) over ``tasks`` tasks created beforehand."""
    for i in range(tasks):
        store.create(direction=f"cycle {i}", task_type="run")
    before = trips.count
    for i in range(tasks):
        cycle(i)
    return (trips.count - before) / tasks


def measure(url: str, tasks: int) -> dict[str, float]:
    engine = create_store_engine(url)
    migrate(engine)
    store = TaskStore(engine)
    trips = RoundTrips(engine)

    def two_calls(i: int) -> None:
        task = store.claim("bench", request_id=f"two-{i}")
        store.finish(task["id"], task["claim_token"], status="completed", output="ok", exit_code=0)

    result = {"claim + finish (two calls)": per_cycle(store, trips, tasks, two_calls)}
    if hasattr(store, "finish_and_claim"):
        store.create(direction="first", task_type="run")
        held = [store.claim("bench", request_id="first")]

        def one_call(i: int) -> None:
            task = held.pop()
            _, following = store.finish_and_claim(task["id"], task["claim_token"], status="completed", output="ok",
                                                  exit_code=0, runner_id="bench", request_id=f"one-{i}")
            held.append(following)

        result["finish with claim_next (one call)"] = per_cycle(store, trips, tasks, one_call)
    engine.dispose()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL server")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="round-trips-"))
    stores = {"sqlite": f"sqlite:///{folder / 'bench.db'}"}
    server = None
    if args.postgres:
        from tests.support.postgres import PostgresServer

        server = PostgresServer(folder / "pg").start()
        stores["postgresql"] = server.new_database()
    try:
        for name, url in stores.items():
            for shape, trips in measure(url, args.tasks).items():
                print(f"{name:10s} {shape:36s} {trips:5.2f} round trips per task")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
