#!/usr/bin/env python3
"""Pause drill (issue 21): with one task type paused, several runners claim nothing of it for a while as other work
runs; a resume starts it at once.

The shape operators run: one `coherence api` and --runners `coherence runner` processes (one slot each). The type
`impl` is paused, --held impl tasks are created, and for --hold seconds a feeder keeps `run` tasks coming. The
bench samples every task's status every --tick seconds: any impl task seen running or finished before the resume is
a failure. Then `coherence resume --type impl` (through the client, as the CLI does) and the time until the first
impl task runs is measured. Exit 0 when no paused task was claimed and every impl task ran after the resume.

Example: `.venv/bin/python bench/pause_drill.py --store both` (the figures are in bench/README.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coherence_network.client import ApiClient  # noqa: E402
from coherence_network.contract import TaskStatus, TaskType  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

HELD = TaskType.IMPL


def drill(store: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One drill on one store; the runners and the API are stopped before it returns."""
    store_env = {"DATABASE_URL": ""}
    postgres = None
    if store == "postgresql":
        postgres = PostgresServer(work / "pg").start()
        store_env["DATABASE_URL"] = postgres.new_database()
    api = ApiProcess(work / "api-home", env={**store_env, "COHERENCE_LOG_LEVEL": "WARNING"}).start()
    runners: list[subprocess.Popen[bytes]] = []
    try:
        with ApiClient(api.url, token="", actor="cli:bench") as client:
            client.pause("cli:bench", "pause drill", task_type=HELD)
            held = [client.create_task(f"held {i}", HELD).id for i in range(args.held)]
            (work / "workspace").mkdir()
            env = {**os.environ, "AGENT_API_BASE": api.url, "COHERENCE_AGENT_COMMAND": "true",
                   "COHERENCE_WORKSPACE": str(work / "workspace")}
            for number in range(args.runners):
                home = work / f"runner-{number}"
                with open(work / f"runner-{number}.out", "ab") as out:
                    runners.append(subprocess.Popen(
                        [sys.executable, "-m", "coherence_network.cli", "runner", "--workers", "1",
                         "--interval", "0.2", "--runner-id", f"drill-{number}"],
                        env={**env, "COHERENCE_HOME": str(home)}, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True))
            fed = itertools.count()
            claimed_while_paused: set[int] = set()
            samples = 0
            end = time.monotonic() + args.hold
            while time.monotonic() < end:
                pending_runs = client.list_tasks(status=TaskStatus.PENDING, task_type=TaskType.RUN, limit=1).total
                for _ in range(max(0, args.runners * 2 - pending_runs)):
                    client.create_task(f"other {next(fed)}", TaskType.RUN, command="sleep 0.2")
                page = client.list_tasks(task_type=HELD, limit=len(held))
                claimed_while_paused |= {t.id for t in page.items if t.status != TaskStatus.PENDING}
                samples += 1
                time.sleep(args.tick)
            others_done = client.list_tasks(status=TaskStatus.COMPLETED, task_type=TaskType.RUN, limit=1).total
            resumed = time.monotonic()
            client.resume("cli:bench", task_type=HELD)
            first_start = None
            while time.monotonic() - resumed < 30:
                page = client.list_tasks(task_type=HELD, limit=len(held))
                if first_start is None and any(t.status != TaskStatus.PENDING for t in page.items):
                    first_start = time.monotonic() - resumed
                if all(t.status == TaskStatus.COMPLETED for t in page.items):
                    break
                time.sleep(0.01)
            all_ran = all(t.status == TaskStatus.COMPLETED for t in page.items)
            return {
                "store": store, "runners": args.runners, "held_tasks": args.held, "hold_seconds": args.hold,
                "samples": samples, "claimed_while_paused": sorted(claimed_while_paused),
                "other_tasks_completed_while_paused": others_done,
                "first_held_claim_after_resume_seconds": None if first_start is None else round(first_start, 3),
                "all_held_ran_after_resume": all_ran,
            }
    finally:
        for proc in runners:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in runners:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        api.stop()
        if postgres is not None:
            postgres.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--runners", type=int, default=4, help="runner processes, one slot each (default 4)")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds the type stays paused (default 60)")
    parser.add_argument("--held", type=int, default=8, help="tasks of the paused type (default 8)")
    parser.add_argument("--tick", type=float, default=0.25, help="seconds between samples (default 0.25)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (runner output, logs)")
    args = parser.parse_args(argv)
    stores = ("sqlite", "postgresql") if args.store == "both" else (args.store,)
    reports = []
    for store in stores:
        work = Path(tempfile.mkdtemp(prefix=f"coherence-pause-{store}-"))
        try:
            reports.append(drill(store, args, work))
        finally:
            if args.keep:
                print(f"work folder kept: {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(reports, indent=2))
    ok = all(not r["claimed_while_paused"] and r["all_held_ran_after_resume"] for r in reports)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
