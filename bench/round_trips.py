#!/usr/bin/env python3
"""Database round trips per claim+finish cycle, counted on the engine, on SQLite and PostgreSQL.

What the API's store does for each task a runner handles, straight through TaskStore (no HTTP): the protocol a
runner used before issue 14 (a claim with a request id, then a finish: two calls) and, where the tree has it, the
one call that finishes a task and claims the next. A round trip is one exchange with the database as the driver
makes it: each statement, each COMMIT and ROLLBACK, on PostgreSQL each BEGIN (psycopg sends it as a command of its
own; none of these on a connection in autocommit), and a ping per pool checkout when pre-ping is on. Counted with
SQLAlchemy events.

It imports whatever tree is on PYTHONPATH, so the same script counts an older commit:
  `PYTHONPATH=src .venv/bin/python bench/round_trips.py [--postgres]` (see bench/README.md).

`--steering` (issue 21) times the same cycles, cycles per second beside round trips per task, with steering in place:
no policy, a limit on another type, a limit on the claimed type, a paused other type, and a limit on another type
whose tasks (at their limit) lead the queue. Each condition on a fresh store, the conditions interleaved over
``--rounds`` rounds (the median is shown), so a shared machine's changing load hits them alike.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support

from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine, migrate


class RoundTrips:
    """Counts the round trips an engine makes (see the module's docstring for what one is)."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._one)
        ends = ["commit", "rollback"] + (["begin"] if engine.dialect.name == "postgresql" else [])
        for name in ends:
            sa.event.listen(engine, name, self._unless_autocommit)
        if engine.pool._pre_ping:
            sa.event.listen(engine.pool, "checkout", self._one)

    def _one(self, *_: Any, **__: Any) -> None:
        self.count += 1

    def _unless_autocommit(self, conn: sa.Connection) -> None:
        """A BEGIN, COMMIT or ROLLBACK the driver sends: none on a connection in autocommit (each statement commits
        by itself; SQLAlchemy still marks where its transaction would be)."""
        if getattr(conn.connection.dbapi_connection, "autocommit", False) is not True:
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
    for name, key in (("create", None), ("create with a key", "k"), ("create replayed by its key", "k")):
        before = trips.count
        for i in range(tasks):
            store.create(direction="made", task_type="run", idempotency_key=key and f"{key}{i}")
        result[name] = (trips.count - before) / tasks
    engine.dispose()
    return result


# The steering conditions: what is set before the cycles start. "impl" is the other type: 2 of its tasks run (its
# limit, where it has one) and 50 wait, behind the claimed tasks except where they lead.
CONDITIONS = ("no policy", "limit on another type", "limit on the claimed type", "paused other type",
              "limit on another type, leading")


def _steered(store: TaskStore, condition: str) -> None:
    leading = condition.endswith("leading")
    for i in range(52):
        store.create(direction=f"other {i}", task_type="impl", priority=1 if leading else -1)
    store.claim_many("other", 2, types=["impl"])
    if condition.startswith("limit on another type"):
        store.set_type_policy("impl", "bench", max_running=2)
    elif condition == "limit on the claimed type":
        store.set_type_policy("run", "bench", max_running=2)  # a claim+finish holds one at a time: never reached
    elif condition == "paused other type":
        store.pause("impl", "bench", "bench")


def steering_round(url: str, condition: str, tasks: int) -> dict[str, tuple[float, float, float]]:
    """``timed``'s figures for both cycle shapes under ``condition``, on the store at ``url``."""
    engine = create_store_engine(url)
    migrate(engine)
    store = TaskStore(engine)
    trips = RoundTrips(engine)
    _steered(store, condition)

    def two_calls(i: int) -> None:
        task = store.claim("bench", request_id=f"two-{i}")
        assert task is not None and task["task_type"] == "run", task
        store.finish(task["id"], task["claim_token"], status="completed", output="ok", exit_code=0)

    store.create(direction="first", task_type="run", priority=-2)  # the one call's first, claimed last
    result = {"claim + finish (two calls)": timed(store, trips, tasks, two_calls)}
    held = [store.claim("bench", request_id="first")]
    for i in range(tasks):
        store.create(direction=f"cycle {i}", task_type="run")

    def one_call(i: int) -> None:
        task = held.pop()
        _, following = store.finish_and_claim(task["id"], task["claim_token"], status="completed", output="ok",
                                              exit_code=0, runner_id="bench", request_id=f"one-{i}")
        held.append(following)

    result["finish with claim_next (one call)"] = timed(store, trips, tasks, one_call, create=False)
    engine.dispose()
    return result


def timed(store: TaskStore, trips: RoundTrips, tasks: int, cycle: Callable[[int], None], *,
          create: bool = True) -> tuple[float, float, float]:
    """(cycles per second, round trips per task, this process's CPU microseconds per task) of ``cycle`` over
    ``tasks`` tasks (created first unless ``create`` is false). The CPU time is all of SQLite's work and the client's
    side of PostgreSQL's, and moves less than the wall clock with other load on the machine."""
    for i in range(tasks if create else 0):
        store.create(direction=f"cycle {i}", task_type="run")
    before, started, cpu = trips.count, time.perf_counter(), time.process_time()
    for i in range(tasks):
        cycle(i)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return tasks / wall, (trips.count - before) / tasks, cpu / tasks * 1e6


def steering(stores: dict[str, Callable[[], str]], tasks: int, rounds: int) -> None:
    """Print the steering table: per store, condition and cycle shape, the median cycles/s and the round trips."""
    runs: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    limits = hasattr(TaskStore, "set_type_policy")  # an older tree measures the conditions it has
    conditions = [c for c in CONDITIONS if limits or not c.startswith("limit")]
    for _ in range(rounds):
        for name, fresh in stores.items():
            for condition in conditions:
                for shape, figures in steering_round(fresh(), condition, tasks).items():
                    runs.setdefault((name, condition, shape), []).append(figures)
    for (name, condition, shape), figures in runs.items():
        rate, cpu = statistics.median(f[0] for f in figures), statistics.median(f[2] for f in figures)
        print(f"{name:10s} {condition:32s} {shape:34s} {rate:7.0f} cycles/s {figures[0][1]:5.2f} round trips "
              f"{cpu:6.0f} us CPU")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL server")
    parser.add_argument("--steering", action="store_true", help="cycles/s and round trips with limits and pauses")
    parser.add_argument("--rounds", type=int, default=3, help="--steering: rounds of every condition (median)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="round-trips-"))
    stores = {"sqlite": f"sqlite:///{folder / 'bench.db'}"}
    fresh: dict[str, Callable[[], str]] = {"sqlite": lambda: f"sqlite:///{folder / uuid.uuid4().hex}.db"}
    server = None
    if args.postgres:
        from tests.support.postgres import PostgresServer

        server = PostgresServer(folder / "pg").start()
        stores["postgresql"] = server.new_database()
        fresh["postgresql"] = server.new_database
    try:
        if args.steering:
            steering(fresh, args.tasks, args.rounds)
            return 0
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
