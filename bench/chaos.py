#!/usr/bin/env python3
"""Chaos benchmark (issue 10): short `run` tasks under 4 runners while runners and the API are killed.

A real `coherence api` and N `coherence runner` processes (--workers 1 each, one COHERENCE_HOME, as on one host) run
tasks whose command is a small helper script. Each execution appends to one shared file:
  start <task> <run> <time> <pid> <ancestor pids>   then   alive ... every beat,   end ... (or term ... on SIGTERM)
so executions, their overlaps and which runner process started them (its pid is among the ancestors) are known
from the tasks themselves, not from the code under test. Faults, at moments drawn from --seed as the queue
drains: --kills SIGKILLs of a runner's whole process group (a busy runner when there is one; restarted after
--restart-pause, as a supervisor would), one API SIGKILL (restarted at once, same port and store) and one API
outage of twice the lease (SIGKILL, wait, restart). The report says what the core promises: no task lost, no task
running twice at once, every re-run explained by a runner killed while it held that task, none caused by the API
going away, and the time from a runner's death to its task running again.

A share of the tasks (--long-share) lasts 2.5-3.5 leases, as agent tasks do: only a task that outlives the lease
can show a copy running after its runner died, and only one still running when the API comes back can show what an
outage does to in-flight work; so the outage waits from its drawn moment until half the runners run a task that
will outlast it (one such task once 10 % more of the tasks have settled, none after 20 %).

A re-run is put down to the first of: the runner that ran the previous execution was SIGKILLed while it ran; the API
was down between the two starts (api_kill, api_outage: these must be 0); that runner was SIGKILLed after the
execution ended, before its result was delivered; else it is unexplained. Every fault is also written to faults.log
in the work folder (--keep), next to events.log, for checking the report by hand.
Exit 0 when every promise holds, 1 otherwise.
Example: `.venv/bin/python bench/chaos.py --store sqlite` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds a queue.py that would shadow the standard library's `queue` (psycopg imports it): keep it off the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from coherence_network.contract import SETTLED_STATUSES, TaskStatus, TaskType  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

BEAT = 0.5  # seconds between a task's "alive" lines: a killed execution died within one beat of its last line
TICK = 0.25  # the fault loop's polling period
PROGRESS_EVERY = 10.0
LONG_LEASES = (2.5, 3.5)  # a long task outlives its lease after a runner kill, and an outage of two leases

TASK_SCRIPT = '''\
"""One chaos task: record its start (with its ancestor pids), say it is alive every beat, record its end."""
import fcntl, os, signal, sys, time

events, counters, seconds, beat = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
task = os.environ["COHERENCE_TASK_ID"]


def ancestors(pid, depth=4):
    chain = []
    for _ in range(depth):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
        chain.append(pid)
    return chain


with open(os.path.join(counters, task), "a+") as counter:  # run number: executions of this task so far, under a lock
    fcntl.flock(counter, fcntl.LOCK_EX)
    counter.write("x")
    counter.flush()
    run = os.fstat(counter.fileno()).st_size
out = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(kind, extra=""):
    os.write(out, f"{kind} {task} {run} {time.time():.6f} {os.getpid()}{extra}\\n".encode())


record("start", " " + ",".join(map(str, ancestors(os.getpid()))))
signal.signal(signal.SIGTERM, lambda *_: (record("term"), os._exit(143)))
deadline = time.monotonic() + seconds
while deadline - time.monotonic() > beat:
    time.sleep(beat)
    record("alive")
time.sleep(max(0.0, deadline - time.monotonic()))
record("end")
'''


# --- what happened -------------------------------------------------------------------------------------------------
@dataclass
class Execution:
    """One run of one task's process, as the process itself recorded it."""

    task: int
    run: int
    start: float
    pid: int
    ancestors: list[int]
    last_seen: float
    end: float | None = None
    how: str | None = None  # "end" (ran to its end) or "term" (stopped by SIGTERM); None: killed, no last word

    @property
    def stop(self) -> float:
        """When it stopped running: its last word, or (killed) within one beat of its last sign of life."""
        return self.end if self.end is not None else self.last_seen + BEAT


@dataclass
class RunnerLife:
    """One runner process: slot, generation, pid, and when the bench started and SIGKILLed it."""

    slot: int
    gen: int
    pid: int
    started: float
    killed: float | None = None

    @property
    def name(self) -> str:
        return f"runner {self.slot}.{self.gen}"


@dataclass
class ApiDown:
    kind: str  # "api_kill" or "api_outage"
    down: float
    up: float


class EventLog:
    """Reads the shared file as it grows; an incomplete last line waits for the next read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.runs: dict[tuple[int, int], Execution] = {}
        self.last_time = 0.0

    def read(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            self.add(line)

    def add(self, line: str) -> None:
        kind, task, run, at, pid, *rest = line.split()
        key, when = (int(task), int(run)), float(at)
        self.last_time = max(self.last_time, when)
        if kind == "start":
            chain = [int(p) for p in rest[0].split(",")] if rest and rest[0] else []
            self.runs[key] = Execution(key[0], key[1], when, int(pid), chain, when)
            return
        execution = self.runs[key]
        execution.last_seen = max(execution.last_seen, when)
        if kind in ("end", "term"):
            execution.end, execution.how = when, kind

    def open_on(self, pid: int) -> bool:
        """True when a process started by runner ``pid`` is still running (no last word, seen within two beats)."""
        now = time.time()
        return any(e.end is None and pid in e.ancestors and now - e.last_seen < 2 * BEAT for e in self.runs.values())

    def alive(self) -> list[Execution]:
        now = time.time()
        return [e for e in self.runs.values() if e.end is None and now - e.last_seen < 2 * BEAT]


# --- the analysis --------------------------------------------------------------------------------------------------
def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def analyse(
    runs: list[Execution], lives: list[RunnerLife], outages: list[ApiDown], tasks: list[dict[str, Any]],
    created: list[int],
) -> dict[str, Any]:
    """Everything the report says, from the tasks' own records, the faults injected and the API's final task list."""
    by_pid = {life.pid: life for life in lives}

    def runner_of(execution: Execution) -> RunnerLife | None:
        return next((by_pid[p] for p in execution.ancestors if p in by_pid), None)

    def runner_name(execution: Execution) -> str:
        life = runner_of(execution)
        return life.name if life else "unknown"

    per_task: dict[int, list[Execution]] = {}
    for execution in sorted(runs, key=lambda e: (e.start, e.run)):
        per_task.setdefault(execution.task, []).append(execution)

    def cause(prev: Execution, nxt: Execution) -> str:
        """Why ``nxt`` ran again after ``prev``: the fault between the two starts that explains it.

        A runner killed while the process ran explains it for sure. A runner killed after the process ended (its
        result not yet delivered) only when the API did not go away meanwhile too: a re-run the API may have
        caused is counted against the API, so the figure that must be 0 is never flattered."""
        life = runner_of(prev)
        killed = life.killed if life is not None else None
        if killed is not None and not prev.start <= killed <= nxt.start:
            killed = None
        if killed is not None and (prev.end is None or prev.end > killed):
            return "runner_killed_while_running"
        for window in outages:
            if window.down <= nxt.start and window.up >= prev.start:
                return window.kind
        return "runner_killed_before_delivery" if killed is not None else "unexplained"

    reruns: list[dict[str, Any]] = []
    overlaps: list[dict[str, Any]] = []
    for task_id, executions in per_task.items():
        for prev, nxt in itertools.pairwise(executions):
            why = cause(prev, nxt)
            reruns.append({"task": task_id, "run": nxt.run, "after_run": prev.run, "cause": why,
                           "at": nxt.start, "previous_runner": runner_name(prev)})
        for i, first in enumerate(executions):
            for second in executions[i + 1:]:
                if second.start < first.stop:
                    overlaps.append({
                        "task": task_id, "runs": [first.run, second.run], "cause": cause(first, second),
                        "seconds": round(min(first.stop, second.stop) - second.start, 3),
                        "first_killed": first.end is None,
                    })

    recovery: list[float] = []
    not_rerun: list[dict[str, Any]] = []
    holding = 0
    for life in lives:
        if life.killed is None:
            continue
        held = [e for e in runs if runner_of(e) is life and e.start <= life.killed and e.stop > life.killed]
        holding += bool(held)
        for execution in held:
            later = [e.start for e in per_task[execution.task] if e.start > life.killed]
            if later:
                recovery.append(min(later) - life.killed)
            else:
                not_rerun.append({"task": execution.task, "runner": life.name})

    status = {task["id"]: task["status"] for task in tasks}
    failed = [{"id": task["id"], "attempts": task.get("attempts"), "step": task.get("current_step")}
              for task in tasks if task["id"] in set(created) and task["status"] == TaskStatus.FAILED.value]
    settled = {s.value for s in SETTLED_STATUSES}
    missing = [i for i in created if i not in status]
    not_final = [i for i in created if i in status and status[i] not in settled]
    completed = [i for i in created if status.get(i) == TaskStatus.COMPLETED.value]
    causes = ["runner_killed_while_running", "runner_killed_before_delivery", "api_kill", "api_outage", "unexplained"]
    api_reruns = [r for r in reruns if r["cause"] in ("api_kill", "api_outage")]
    report = {
        "tasks": {
            "created": len(created),
            "completed": len(completed),
            "failed": len(failed),
            "failed_tasks": failed,
            "lost": len(missing) + len(not_final),
            "missing": missing,
            "not_final": not_final,
            "extra": sorted(set(status) - set(created)),
            "completed_never_started": [i for i in completed if i not in per_task],
        },
        "executions": {
            "started": len(runs),
            "ended": sum(e.how == "end" for e in runs),
            "terminated": sum(e.how == "term" for e in runs),
            "killed": sum(e.how is None for e in runs),
            "runner_unknown": sum(runner_of(e) is None for e in runs),
        },
        "faults": {
            "runner_kills": sum(life.killed is not None for life in lives),
            "runner_kills_holding_a_task": holding,
            "api": [{"kind": w.kind, "down_seconds": round(w.up - w.down, 2)} for w in outages],
        },
        "overlaps": {
            "pairs": len(overlaps),
            "tasks": len({o["task"] for o in overlaps}),
            "total_seconds": round(sum(o["seconds"] for o in overlaps), 2),
            "max_seconds": max((o["seconds"] for o in overlaps), default=0.0),
            "by_cause": {c: sum(o["cause"] == c for o in overlaps) for c in causes},
            "items": overlaps,
        },
        "reruns": {
            "total": len(reruns),
            "by_cause": {c: sum(r["cause"] == c for r in reruns) for c in causes},
            "items": reruns,
        },
        "api_outage_reruns": len(api_reruns),
        "recovery_seconds": {
            "count": len(recovery),
            "p50": round(statistics.median(recovery), 2) if recovery else None,
            "max": round(max(recovery), 2) if recovery else None,
            "not_rerun": not_rerun,
        },
    }
    report["promises"] = {
        "no_task_lost": report["tasks"]["lost"] == 0,
        "never_twice_at_once": not overlaps,
        "every_rerun_explained_by_a_runner_kill": not api_reruns and not report["reruns"]["by_cause"]["unexplained"],
        "no_api_outage_rerun": len(api_reruns) == 0,
    }
    return report


def render(report: dict[str, Any]) -> str:
    """The report as an operator reads it; the figures that must be 0 in capitals."""
    s, t, e, f = report["settings"], report["tasks"], report["executions"], report["faults"]
    o, r, rec = report["overlaps"], report["reruns"], report["recovery_seconds"]

    def causes(counts: dict[str, int]) -> str:
        return ", ".join(f"{name} {n}" for name, n in counts.items() if n) or "none"

    def secs(value: float | None) -> str:
        return "n/a" if value is None else f"{value}s"

    api = ", ".join(f"{w['kind']} down {w['down_seconds']}s" for w in f["api"]) or "none"
    lines = [
        f"chaos on {s['store']}: {t['created']} tasks, {s['runners']} runners, wall {report['wall_seconds']}s",
        (f"settings: lease {s['lease_seconds']}s (runner heartbeat every {s['heartbeat_seconds']:.2f}s), reaper "
         f"every {s['reap_interval']}s, runner --interval {s['runner_interval']}s, restart pause "
         f"{s['restart_pause']}s, seed {s['seed']}, short tasks {s['sleep']}s, long tasks {s['long_seconds']}s "
         f"(share {s['long_share']})"),
        (f"faults: {f['runner_kills']} runner SIGKILLs ({f['runner_kills_holding_a_task']} holding a task); "
         f"API: {api}"),
        (f"tasks: completed {t['completed']}, failed {t['failed']}, LOST {t['lost']} (missing {t['missing']}, "
         f"not final {t['not_final']}), extra {t['extra']}, completed never started {t['completed_never_started']}"),
        (f"executions: {e['started']} started, {e['ended']} ran to their end, {e['terminated']} stopped by "
         f"SIGTERM, {e['killed']} killed; runner unknown {e['runner_unknown']}; task processes left running at "
         f"the end {report['left_running']}"),
        (f"TWICE AT ONCE: {o['pairs']} pairs of executions on {o['tasks']} tasks, {o['total_seconds']}s in all, "
         f"longest {o['max_seconds']}s ({causes(o['by_cause'])})"),
        f"re-runs: {r['total']} ({causes(r['by_cause'])})",
        f"API-OUTAGE RE-RUNS: {report['api_outage_reruns']}",
        (f"recovery, runner death -> its task running again: p50 {secs(rec['p50'])}, max {secs(rec['max'])} "
         f"over {rec['count']} tasks; never ran again {rec['not_rerun']}"),
    ]
    lines += [f"  failed: task {x['id']} after {x['attempts']} attempts ({x['step']})" for x in t["failed_tasks"]]
    lines += [f"  overlap: task {x['task']} runs {x['runs']} for {x['seconds']}s ({x['cause']})" for x in o["items"]]
    lines += [f"  re-run: task {x['task']} run {x['run']} ({x['cause']})" for x in r["items"]
              if x["cause"] not in ("runner_killed_while_running", "runner_killed_before_delivery")]
    lines.append("promises: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["promises"].items()))
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------------------------
def say(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)


class Chaos:
    """The processes and the fault schedule of one run."""

    def __init__(self, args: argparse.Namespace, work: Path, store_env: dict[str, str]) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.home = work / "home"
        (work / "workspace").mkdir(parents=True)
        (work / "runs").mkdir()
        self.script = work / "chaos_task.py"
        self.script.write_text(TASK_SCRIPT)
        self.log = EventLog(work / "events.log")
        timing = {"COHERENCE_LEASE_SECONDS": str(args.lease), "COHERENCE_REAP_INTERVAL": str(args.reap_interval)}
        self.api = ApiProcess(self.home, env={**timing, **store_env, "COHERENCE_LOG_LEVEL": "WARNING"})
        self.runner_env = {**os.environ, **timing, "COHERENCE_HOME": str(self.home),
                           "COHERENCE_WORKSPACE": str(work / "workspace")}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # slot -> live runner process
        self.lives: list[RunnerLife] = []
        self.restart_at: dict[int, float] = {}  # slot -> monotonic time to restart it
        self.outages: list[ApiDown] = []
        self.api_back: tuple[str, float, float] | None = None  # while the API is down: kind, since, restart time
        self.left_running = 0
        self.created: list[int] = []
        self.lengths: dict[int, float] = {}  # task id -> seconds its command runs
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        say(message, self.started)

    def note(self, at: float, what: str) -> None:
        """One line of faults.log: the raw record the report can be checked against."""
        with open(self.work / "faults.log", "a", encoding="utf-8") as faults:
            faults.write(f"{at:.6f} {what}\n")

    def in_flight_past(self, seconds: float) -> int:
        """How many task processes are running with at least ``seconds`` of their work left."""
        self.log.read()
        now = time.time()
        return sum(e.start + self.lengths.get(e.task, 0.0) - now >= seconds for e in self.log.alive())

    def command(self, seconds: float) -> str:
        return shlex.join([sys.executable, str(self.script), str(self.log.path), str(self.work / "runs"),
                           f"{seconds:.2f}", str(BEAT)])

    def task_seconds(self) -> float:
        low, high = self.args.sleep
        if self.rng.random() < self.args.long_share:
            return self.rng.uniform(*LONG_LEASES) * self.args.lease
        return self.rng.uniform(low, high)

    def start_runner(self, slot: int) -> None:
        gen = sum(life.slot == slot for life in self.lives)
        with open(self.work / f"runner-{slot}.out", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "coherence_network.cli", "runner", "--workers", "1",
                 "--interval", str(self.args.runner_interval), "--runner-id", f"chaos-{slot}.{gen}"],
                env={**self.runner_env, "AGENT_API_BASE": self.api.url}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[slot] = proc
        self.lives.append(RunnerLife(slot, gen, proc.pid, time.time()))
        self.note(self.lives[-1].started, f"runner_start {slot}.{gen} pid {proc.pid}")

    def kill_runner(self) -> None:
        """SIGKILL the whole process group of a random runner, a busy one when there is one."""
        self.log.read()
        alive = sorted(self.procs)
        busy = [slot for slot in alive if self.log.open_on(self.procs[slot].pid)]
        slot = self.rng.choice(busy or alive)
        proc = self.procs.pop(slot)
        life = next(life for life in self.lives if life.pid == proc.pid)
        life.killed = time.time()
        self.note(life.killed, f"runner_kill {slot}.{life.gen} pid {proc.pid}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.restart_at[slot] = time.monotonic() + self.args.restart_pause
        kills = sum(x.killed is not None for x in self.lives)
        self.say(f"SIGKILL {life.name} (pid {proc.pid}, {'busy' if busy else 'idle'}); kill {kills}/{self.args.kills}")

    def api_down(self, kind: str, pause: float) -> None:
        """SIGKILL the API; the loop starts it again on the same port and store after ``pause`` seconds."""
        self.api_back = (kind, time.time(), time.monotonic() + pause)
        self.note(self.api_back[1], f"api_down {kind}")
        self.api.kill()
        self.say(f"SIGKILL the API ({kind}); back in {pause:g}s")

    def api_up(self) -> None:
        assert self.api_back is not None
        kind, down, _ = self.api_back
        self.api.start()
        self.api_back = None
        self.outages.append(ApiDown(kind, down, time.time()))
        self.note(self.outages[-1].up, f"api_up {kind}")
        self.say(f"API back after {self.outages[-1].up - down:.1f}s")

    def ready(self, threshold: int, fault: str, settled: int) -> bool:
        """Whether a fault whose moment has come can be injected now."""
        if fault == "runner":
            return bool(self.procs)
        if fault == "api_outage":  # half the runners in flight through it; fewer as the queue drains on
            late = (settled - threshold) // max(1, self.args.tasks // 10)
            return self.in_flight_past(2 * self.args.lease + 2) >= max(1, self.args.runners // 2) - late
        return True

    def count(self, http: httpx.Client) -> dict[str, int] | None:
        try:
            return http.get(f"{self.api.url}/api/agent/tasks/count", timeout=5).json()["by_status"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def schedule(self) -> list[tuple[int, str]]:
        """(settled tasks, fault) pairs: the faults fire as the queue drains past random points."""
        n = self.args.tasks
        faults = [(int(self.rng.uniform(0.03, 0.9) * n), "runner") for _ in range(self.args.kills)]
        faults.append((int(self.rng.uniform(0.2, 0.45) * n), "api_kill"))
        faults.append((int(self.rng.uniform(0.55, 0.8) * n), "api_outage"))
        return sorted(faults)

    def run(self) -> dict[str, Any]:
        args = self.args
        self.api.start()
        lengths = [self.task_seconds() for _ in range(args.tasks)]
        with httpx.Client(base_url=self.api.url, timeout=30) as http:
            for i, seconds in enumerate(lengths):
                response = http.post("/api/agent/tasks", json={
                    "direction": f"chaos task {i}", "task_type": TaskType.RUN.value, "command": self.command(seconds),
                })
                response.raise_for_status()
                self.created.append(response.json()["id"])
                self.lengths[self.created[-1]] = seconds
        self.say(f"{args.tasks} tasks created ({sum(lengths):.0f}s of work in all); starting {args.runners} runners")
        for slot in range(args.runners):
            self.start_runner(slot)
        faults = self.schedule()
        deadline = self.started + args.timeout
        next_progress = time.monotonic() + PROGRESS_EVERY
        settled = 0
        with httpx.Client() as http:
            while time.monotonic() < deadline:
                for slot, at in list(self.restart_at.items()):
                    if time.monotonic() >= at:
                        del self.restart_at[slot]
                        self.start_runner(slot)
                if self.api_back is not None and time.monotonic() >= self.api_back[2]:
                    self.api_up()
                by_status = self.count(http) if self.api_back is None else None
                if by_status is not None:
                    settled = sum(by_status.get(s.value, 0) for s in SETTLED_STATUSES)
                if faults and settled >= faults[0][0] and self.ready(*faults[0], settled):
                    _, fault = faults.pop(0)
                    if fault == "runner":
                        self.kill_runner()
                    else:
                        self.api_down(fault, 0.0 if fault == "api_kill" else 2 * args.lease)
                if time.monotonic() >= next_progress:
                    next_progress += PROGRESS_EVERY
                    running = by_status.get(TaskStatus.RUNNING.value, 0) if by_status else "?"
                    self.say(f"settled {settled}/{args.tasks}, running {running}, faults left {len(faults)}")
                if settled >= args.tasks and not faults and self.api_back is None:
                    break
                time.sleep(TICK)
            self.say(f"settled {settled}/{args.tasks}; waiting for task processes still alive")
            self.log.read()
            longest = max(lengths, default=0.0) + 5
            while self.log.alive() and time.monotonic() < deadline + longest:
                time.sleep(TICK)
                self.log.read()
            tasks = self.task_list(http)
        return self.finish(tasks)

    def task_list(self, http: httpx.Client) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = http.get(f"{self.api.url}/api/agent/tasks",
                            params={"order": "oldest", "limit": 500, "offset": len(items)}, timeout=30).json()
            items += page["items"]
            if not page["items"] or len(items) >= page["total"]:
                return items

    def finish(self, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        self.stop()
        self.log.read()
        report: dict[str, Any] = {"settings": {
            "store": self.args.store, "tasks": self.args.tasks, "runners": self.args.runners, "kills": self.args.kills,
            "lease_seconds": self.args.lease, "heartbeat_seconds": max(0.2, self.args.lease / 3),
            "reap_interval": self.args.reap_interval, "runner_interval": self.args.runner_interval,
            "restart_pause": self.args.restart_pause, "api_outage_seconds": 2 * self.args.lease,
            "seed": self.args.seed, "sleep": list(self.args.sleep), "long_share": self.args.long_share,
            "long_seconds": [x * self.args.lease for x in LONG_LEASES], "beat_seconds": BEAT,
        }, "wall_seconds": round(wall, 1)}
        report.update(analyse(list(self.log.runs.values()), self.lives, self.outages, tasks, self.created))
        report["left_running"] = self.left_running
        return report

    def stop(self) -> None:
        """Stop the runners and the API, then any task process still alive (counted: nothing should be).

        Safe to call again: the second call finds nothing left."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        self.api.stop()
        self.log.read()
        for execution in self.log.runs.values():
            try:
                ours = str(self.script).encode() in Path(f"/proc/{execution.pid}/cmdline").read_bytes()
            except OSError:
                continue
            if ours and execution.end is None:
                self.left_running += 1
                os.kill(execution.pid, signal.SIGKILL)


def parse_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    try:
        pair = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds, got {text!r}") from None
    if not 0 < pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX, got {text!r}")
    return pair


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite",
                        help="sqlite: a fresh file in the work folder; postgresql: a throwaway server from the "
                             "installed binaries (tests/support/postgres.py), unless --database-url is given")
    parser.add_argument("--database-url", default="", help="an existing empty PostgreSQL database to use instead")
    parser.add_argument("--tasks", type=int, default=500, help="run tasks to create (default 500)")
    parser.add_argument("--runners", type=int, default=4, help="runner processes, --workers 1 each (default 4)")
    parser.add_argument("--kills", type=int, default=15, help="runner SIGKILLs (default 15)")
    parser.add_argument("--lease", type=float, default=6.0, help="COHERENCE_LEASE_SECONDS (default 6); the API "
                        "outage lasts twice this")
    parser.add_argument("--reap-interval", type=float, default=0.5,
                        help="COHERENCE_REAP_INTERVAL (default 0.5: a lease's twelfth, as the defaults 5 s and 60 s)")
    parser.add_argument("--runner-interval", type=float, default=0.5, help="runner --interval (default 0.5)")
    parser.add_argument("--restart-pause", type=float, default=1.0,
                        help="seconds before a killed runner is started again (default 1)")
    parser.add_argument("--sleep", type=parse_range, default=(0.2, 2.0), metavar="MIN,MAX",
                        help="how long a short task runs, seconds (default 0.2,2)")
    parser.add_argument("--long-share", type=float, default=0.08,
                        help="share of tasks that run 2.5-3.5 leases instead (default 0.08)")
    parser.add_argument("--seed", type=int, default=10, help="seeds task lengths, fault moments and targets")
    parser.add_argument("--timeout", type=float, default=900, help="give up waiting after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (events.log, logs, store)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    args = parser.parse_args(argv)
    if args.database_url and args.store != "postgresql":
        parser.error("--database-url needs --store postgresql")
    if args.tasks < 1 or args.runners < 1 or args.kills < 0 or args.lease <= 0 or args.reap_interval <= 0:
        parser.error("--tasks and --runners must be at least 1, --kills at least 0, --lease and --reap-interval > 0")
    if not 0 <= args.long_share <= 1:
        parser.error("--long-share is a share between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="coherence-chaos-"))
    postgres = None
    chaos: Chaos | None = None
    try:
        store_env: dict[str, str] = {}
        if args.store == "postgresql":
            if args.database_url:
                store_env["DATABASE_URL"] = args.database_url
            else:
                postgres = PostgresServer(work / "pg").start()
                store_env["DATABASE_URL"] = postgres.new_database()
        chaos = Chaos(args, work, store_env)
        report = chaos.run()
    finally:
        if chaos is not None:  # also when interrupted: leave nothing behind
            chaos.stop()
        if postgres is not None:
            postgres.stop()
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if all(report["promises"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
