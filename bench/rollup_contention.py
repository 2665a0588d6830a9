#!/usr/bin/env python3
"""What keeping the hourly rollup costs concurrent finishes on PostgreSQL (issue 23), straight through TaskStore.

K threads (runners) each finish a task and claim the next in one call (``finish_and_claim``, the runner's cycle)
until N tasks are done, on a fresh database of a throwaway PostgreSQL server; once with the rollup's triggers as
they are and once with them disabled (``ALTER TABLE tasks DISABLE TRIGGER``: for this measurement only, the rollup
then counts nothing). The conditions alternate over ``--rounds`` rounds; tasks per second of each round is printed.
With one rollup row per hour and type, every settling finish waited for the lock of the same row until the finish
before it committed; the rollup's shards (revision 0018) are what this measures.

  .venv/bin/python bench/rollup_contention.py [--runners 4] [--tasks 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support

from coherence_network.contract import MAX_BATCH
from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine
from tests.support.postgres import PostgresServer

TRIGGERS = ("task_hours_on_insert", "task_hours_on_update")


def cycles_per_second(url: str, runners: int, tasks: int, rollup: bool) -> float:
    """Tasks finished per second by ``runners`` threads, each finishing and claiming in one call."""
    engine = create_store_engine(url)
    if not rollup:
        with engine.begin() as conn:
            for trigger in TRIGGERS:
                conn.exec_driver_sql(f"ALTER TABLE tasks DISABLE TRIGGER {trigger}")
    store = TaskStore(engine)
    for start in range(0, tasks + runners, MAX_BATCH):
        store.create_many([{"task_type": "impl", "direction": f"task {i}"}
                           for i in range(start, min(start + MAX_BATCH, tasks + runners))])
    done = [0] * runners

    def runner(slot: int) -> None:
        task = store.claim(f"runner-{slot}")
        while task is not None and sum(done) < tasks:
            _, task = store.finish_and_claim(task["id"], task["claim_token"], status="completed",
                                             runner_id=f"runner-{slot}")
            done[slot] += 1

    threads = [threading.Thread(target=runner, args=(slot,)) for slot in range(runners)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    store.dispose()
    return sum(done) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runners", type=int, default=4, help="Threads finishing and claiming at once")
    parser.add_argument("--tasks", type=int, default=2000, help="Tasks finished per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds of both conditions, alternated")
    args = parser.parse_args()
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="bench-rollup-"))).start()
    try:
        for round_ in range(args.rounds):
            for rollup in (True, False):
                url = server.new_database(migrated=True)
                rate = cycles_per_second(url, args.runners, args.tasks, rollup)
                print(json.dumps({"round": round_ + 1, "runners": args.runners, "rollup": rollup,
                                  "tasks_per_s": round(rate)}), flush=True)
                server.drop_database(url)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
