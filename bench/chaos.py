#!/usr/bin/env python3
"""Chaos benchmark (issues 10 and 18): `run` tasks on several multi-slot runners while runners, the API, the store
and the runners' disk fail, one fault after another.

The shape operators run: one `coherence api` (and its store) and --runners `coherence runner --workers SLOTS`
processes, each in its own process group with its own COHERENCE_HOME (all of them on one small tmpfs, so the disk
can be filled). A feeder keeps the queue supplied with `run` tasks whose command is a helper script; each execution
appends to one journal file outside the homes:
  start <task> <run> <time> <pid> <ancestor pids> <claim token> <runner id>   (the token and runner from the header
        the runner wrote at the top of this run's log),
  claim ... <token> <status> <claimed_by> <lease expiry> <claimed at>   (what GET /api/agent/tasks/{id} said at once),
  alive ... every beat,   end ... (or term ... on SIGTERM),   dkill ... (the task SIGKILLed its runner's group)
so executions, overlaps, stale claims and the runner process that ran each (its pid is among the ancestors) come
from the tasks themselves, not from the code under test.

Faults (--faults, in this order, --gap seconds apart; --kills of each runner kind):
  runner_busy        SIGKILL of the process group of a runner running a task
  runner_delivering  SIGKILL of a runner's group 0-30 ms after one of its tasks exited: while it writes and
                     delivers the result (the task arms a detached killer when it takes a flag file)
  runner_claiming    SIGKILL of a runner holding claims it has not started (the API lists them as running for it,
                     the journal has no start for that claim token): extra claims for other slots, a handoff
  api_kill           SIGKILL of the API, down for --outage seconds; a runner is SIGKILLed meanwhile, while its
                     slots are in claim backoff (runner_backoff), and restarted while the API is still down
  api_term           SIGTERM of the API (the seconds it takes to exit are reported), restarted at once
  api_stop           SIGSTOP of the API for --outage seconds (longer than the lease), then SIGCONT
  store_outage       PostgreSQL: the server stopped for --outage seconds, then started. SQLite: another process
                     holds the database's write lock (BEGIN EXCLUSIVE, as a backup or a sqlite3 shell would) that
                     long; the API's writes wait on it (busy timeout) and reads go on
  disk_full          the runners' tmpfs filled to the last byte for --outage seconds, then freed
A killed runner is started again after --restart-pause seconds, as a supervisor would. After the faults the queue
drains, then a census: one task per slot, each waiting until all have started, shows every slot of every runner
working (with GET /api/agent/runners' heartbeat info).

The report's counters, each with the evidence for a nonzero value: tasks lost, overlapping executions of one task,
runs of a stale claim (at its start the API said its token was superseded, the task no longer running for that
runner, or the lease expired; when the API did not answer, a newer token of the task had already run), re-runs
not caused by a killed runner (the runner of the earlier run was not SIGKILLed by the bench between the two
starts), attempts charged during the disk-full window (attempts added between a snapshot before the fill and one
a lease after the disk was freed), runners that died on their own, slots not working at the end. Exit 0 when all
are 0, 1 otherwise. Example: `.venv/bin/python bench/chaos.py --store both` (see bench/README.md).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coherence_network.contract import SETTLED_STATUSES, TaskStatus, TaskType  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

BEAT = 0.5  # seconds between a task's "alive" lines: a killed execution died within one beat of its last line
TICK = 0.1  # the bench's polling period
PROGRESS_EVERY = 10.0
LONG_LEASES = (2.5, 3.5)  # a long task outlives its lease after a runner kill, and an outage
KILL_KINDS = ("runner_busy", "runner_delivering", "runner_claiming")
FAULTS = (*KILL_KINDS, "api_kill", "api_term", "api_stop", "store_outage", "disk_full")
KILLED = (*KILL_KINDS, "runner_backoff")  # how the bench kills runners; a re-run after one of these is explained
WINDOWED = ("api_kill", "api_term", "api_stop", "store_outage", "disk_full")  # faults with a window, not one kill
SIGTERM_WAIT = 30.0  # seconds the API gets to exit on SIGTERM before it is SIGKILLed

TASK_SCRIPT = '''\
"""One chaos task: record its start, its claim as the API sees it, a beat while alive, and its end."""
import fcntl, json, os, random, signal, sys, time, urllib.request
from datetime import datetime

events, counters, seconds, beat, api, flags, census = sys.argv[1:8]
seconds, beat, census = float(seconds), float(beat), int(census)
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


def header():
    """The claim token and runner id of this run: the last header line the runner wrote in this task's log."""
    token, runner = "-", "-"
    try:
        with open(os.path.join(os.environ["COHERENCE_HOME"], "logs", f"task_{task}.log"), "rb") as log:
            for line in log.read().decode(errors="replace").splitlines():
                if line.startswith(f"=== task {task} "):
                    fields = dict(p.split("=", 1) for p in line.split()[3:] if "=" in p)
                    token, runner = fields.get("run", "-"), fields.get("runner", "-")
    except (OSError, KeyError):
        pass
    return token, runner


def epoch(text):
    return f"{datetime.fromisoformat(text).timestamp():.6f}" if text else "-"


def asked():
    """What the API says of this task now: token, status, claimed_by, lease expiry, claim time."""
    try:
        with urllib.request.urlopen(f"{api}/api/agent/tasks/{task}", timeout=1.5) as answer:
            t = json.load(answer)
        return (f"{t['claim_token']} {t['status']} {t.get('claimed_by') or '-'} {epoch(t.get('lease_expires_at'))} "
                f"{epoch(t.get('started_at'))}")
    except Exception:
        return "- noanswer - - -"


with open(os.path.join(counters, task), "a+") as counter:  # run number: executions of this task so far, under a lock
    fcntl.flock(counter, fcntl.LOCK_EX)
    counter.write("x")
    counter.flush()
    run = os.fstat(counter.fileno()).st_size
out = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(kind, extra=""):
    os.write(out, f"{kind} {task} {run} {time.time():.6f} {os.getpid()}{extra}\\n".encode())


chain = ancestors(os.getpid())
token, runner = header()
record("start", f" {','.join(map(str, chain)) or '-'} {token} {runner}")
signal.signal(signal.SIGTERM, lambda *_: (record("term"), os._exit(143)))
record("claim", " " + asked())
if census:  # wait until every census task has started: all slots at once, or the timeout
    os.makedirs(os.path.join(flags, "census"), exist_ok=True)
    open(os.path.join(flags, "census", task), "w").close()
deadline = time.monotonic() + seconds
while deadline - time.monotonic() > beat:
    if census and len(os.listdir(os.path.join(flags, "census"))) >= census:
        break
    time.sleep(beat)
    record("alive")
time.sleep(0 if census else max(0.0, deadline - time.monotonic()))
record("end")


def kill_runner_after_exit():
    """A detached killer (own session, no inherited pipes) SIGKILLs this run's runner's group 0-30 ms after the
    task exits: while the runner writes and delivers the result."""
    runner_pid = None
    for pid in chain:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"coherence_network.cli\\0runner\\0" in cmdline.read():
                    runner_pid = pid
                    break
        except OSError:
            pass
    if runner_pid is None:
        return
    me, (ready, done) = os.getpid(), os.pipe()
    if os.fork():
        os.read(ready, 1)  # the killer has left our session: our group's stop cannot reach it
        return
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.write(done, b"x")
    stop = time.monotonic() + 5
    while os.path.exists(f"/proc/{me}") and time.monotonic() < stop:
        time.sleep(0.001)
    time.sleep(random.uniform(0, 0.03))
    try:
        group = os.getpgid(runner_pid)
        os.write(out, f"dkill {task} {run} {time.time():.6f} {runner_pid}\\n".encode())
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
    os._exit(0)


if not census:
    try:
        os.rename(os.path.join(flags, "kill-at-end"), os.path.join(flags, f"taken-{task}-{run}"))
    except OSError:
        pass
    else:
        kill_runner_after_exit()
'''


# --- what happened -------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """What the API said of a task just after one of its runs started."""

    token: int | None
    status: str  # a task status, or "noanswer"
    claimed_by: str | None
    lease_expires: float | None
    claimed_at: float | None


@dataclass
class Execution:
    """One run of one task's process, as the process itself recorded it."""

    task: int
    run: int
    start: float
    pid: int
    ancestors: list[int]
    last_seen: float
    token: int | None = None  # the claim token the runner ran it under (from its log header)
    runner_id: str | None = None
    check: Check | None = None
    end: float | None = None
    how: str | None = None  # "end" (ran to its end) or "term" (stopped by SIGTERM); None: killed, no last word

    @property
    def stop(self) -> float:
        """When it stopped running: its last word, or (killed) within one beat of its last sign of life."""
        return self.end if self.end is not None else self.last_seen + BEAT


@dataclass
class RunnerLife:
    """One runner process: slot, generation, pid, when it started and when (and how) it was killed or died."""

    slot: int
    gen: int
    pid: int
    started: float
    killed: float | None = None
    how: str | None = None  # a KILLED kind, or "died" (exited without the bench killing it)

    @property
    def name(self) -> str:
        return f"runner {self.slot}.{self.gen}"

    @property
    def runner_id(self) -> str:
        return f"chaos-{self.slot}.{self.gen}"


@dataclass
class Fault:
    """One injected fault other than a runner kill: its window, and what was seen while injecting it."""

    kind: str
    start: float
    end: float
    detail: dict[str, Any] = field(default_factory=dict)
    tail: float = 0.0  # its effects (leases that expire after it) show up to this long after its end


def _float(text: str) -> float | None:
    return None if text == "-" else float(text)


class EventLog:
    """Reads the shared journal as it grows; an incomplete last line waits for the next read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.runs: dict[tuple[int, int], Execution] = {}
        self.dkills: dict[int, float] = {}  # runner pid -> when a task's killer SIGKILLed it
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
        if kind == "dkill":
            self.dkills[int(pid)] = when
            return
        if kind == "start":
            chain = [int(p) for p in rest[0].split(",")] if rest and rest[0] != "-" else []
            token = rest[1] if len(rest) > 1 and rest[1] != "-" else None
            runner = rest[2] if len(rest) > 2 and rest[2] != "-" else None
            self.runs[key] = Execution(key[0], key[1], when, int(pid), chain, when,
                                       int(token) if token else None, runner)
            return
        execution = self.runs[key]
        execution.last_seen = max(execution.last_seen, when)
        if kind == "claim":
            token, status, claimed_by, lease, claimed = rest
            execution.check = Check(None if token == "-" else int(token), status,
                                    None if claimed_by == "-" else claimed_by, _float(lease), _float(claimed))
        elif kind in ("end", "term"):
            execution.end, execution.how = when, kind

    def alive(self) -> list[Execution]:
        now = time.time()
        return [e for e in self.runs.values() if e.end is None and now - e.last_seen < 2 * BEAT]

    def started_claims(self) -> set[tuple[int, int]]:
        return {(e.task, e.token) for e in self.runs.values() if e.token is not None}


# --- the analysis --------------------------------------------------------------------------------------------------
def stale_reasons(execution: Execution, earlier: list[Execution]) -> list[str] | None:
    """Why this run ran on a claim that was no longer its own ([] when it was fine; None when nothing could tell)."""
    check, token = execution.check, execution.token
    if check is None or check.status == "noanswer":
        newer = [e.token for e in earlier if e.token and token and e.token > token]
        return [f"claim {token} started after claim {max(newer)} had run"] if newer else None
    reasons = []
    if token is not None and check.token is not None and check.token > token:
        reasons.append(f"claim {token} superseded by {check.token}")
    if check.status != TaskStatus.RUNNING.value or (execution.runner_id and check.claimed_by != execution.runner_id):
        reasons.append(f"the API had it {check.status}, claimed by {check.claimed_by}")
    if check.lease_expires is not None and check.lease_expires < execution.start:
        reasons.append(f"lease expired {execution.start - check.lease_expires:.2f}s before the run started")
    return reasons


def max_concurrent(runs: list[Execution]) -> int:
    points = sorted([(e.start, 1) for e in runs] + [(e.stop, -1) for e in runs], key=lambda p: (p[0], p[1]))
    best = now = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best


def analyse(
    runs: list[Execution], lives: list[RunnerLife], faults: list[Fault], tasks: list[dict[str, Any]],
    created: list[int], census: list[int], shape: tuple[int, int], registry: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything the report says, from the tasks' own records, the faults injected and the API's final lists."""
    by_pid = {life.pid: life for life in lives}
    by_id = {life.runner_id: life for life in lives}

    def runner_of(execution: Execution) -> RunnerLife | None:
        """The runner among its ancestors; else (its guard already gone) the one its log header names."""
        found = next((by_pid[p] for p in execution.ancestors if p in by_pid), None)
        return found or by_id.get(execution.runner_id or "")

    def runner_name(execution: Execution) -> str:
        life = runner_of(execution)
        return life.name if life else "unknown"

    per_task: dict[int, list[Execution]] = {}
    for execution in sorted(runs, key=lambda e: (e.start, e.run)):
        per_task.setdefault(execution.task, []).append(execution)

    def cause(prev: Execution, nxt: Execution) -> str:
        """Why ``nxt`` ran again after ``prev``: the runner of ``prev`` killed while it ran or delivered it (right
        after it ended), else the latest fault whose window (and a lease after it) lies between the two starts, else
        that runner killed or dead later, else unexplained."""
        life = runner_of(prev)  # it spawned ``prev``, so it was alive before ``prev`` started (or wrote its start)
        gone = life.killed if life is not None and life.killed is not None else None
        if life is None or gone is None or gone > nxt.start:
            gone = None
        elif life.how in KILLED and (prev.end is None or gone < prev.end + 1.0):
            return "runner_killed"
        for window in sorted(faults, key=lambda w: w.start, reverse=True):  # the latest fault before the re-run
            if window.kind in WINDOWED and window.start <= nxt.start and window.end + window.tail >= prev.start:
                return window.kind
        if life is not None and gone is not None:
            return "runner_killed" if life.how in KILLED else "runner_died"
        return "unexplained"

    reruns: list[dict[str, Any]] = []
    overlaps: list[dict[str, Any]] = []
    stale: list[dict[str, Any]] = []
    unchecked = 0
    for task_id, executions in per_task.items():
        for prev, nxt in itertools.pairwise(executions):
            reruns.append({"task": task_id, "run": nxt.run, "after_run": prev.run, "cause": cause(prev, nxt),
                           "at": nxt.start, "previous_runner": runner_name(prev)})
        for i, first in enumerate(executions):
            reasons = stale_reasons(first, executions[:i])
            if reasons is None:
                unchecked += 1
            elif reasons:
                stale.append({"task": task_id, "run": first.run, "token": first.token, "runner": first.runner_id,
                              "reasons": reasons})
            for second in executions[i + 1:]:
                if second.start < first.stop:
                    overlaps.append({
                        "task": task_id, "runs": [first.run, second.run], "cause": cause(first, second),
                        "seconds": round(min(first.stop, second.stop) - second.start, 3),
                        "first_killed": first.end is None,
                    })

    recovery: list[float] = []
    outlived: list[dict[str, Any]] = []
    for life in lives:
        if life.killed is None:
            continue
        for e in runs:  # the guard stops a task when its runner dies: none should run on to its end
            if runner_of(e) is life and e.how == "end" and e.end is not None and e.end > life.killed + 0.5:
                outlived.append({"task": e.task, "run": e.run, "runner": life.name, "started_after_death":
                                 round(e.start - life.killed, 3), "ended_after_death": round(e.end - life.killed, 3)})
        for execution in (e for e in runs if runner_of(e) is life and e.start <= life.killed < e.stop):
            later = [e.start for e in per_task[execution.task] if e.start > life.killed]
            if later:
                recovery.append(min(later) - life.killed)

    status = {task["id"]: task["status"] for task in tasks}
    failed = [{"id": task["id"], "attempts": task.get("attempts"), "step": task.get("current_step")}
              for task in tasks if task["id"] in set(created) and task["status"] == TaskStatus.FAILED.value]
    settled = {s.value for s in SETTLED_STATUSES}
    missing = [i for i in created if i not in status]
    not_final = [i for i in created if i in status and status[i] not in settled]
    completed = [i for i in created if status.get(i) == TaskStatus.COMPLETED.value]
    bad_reruns = [r for r in reruns if r["cause"] != "runner_killed"]
    disk = next((f for f in faults if f.kind == "disk_full"), None)
    charged = disk.detail.get("charged", []) if disk else []
    died = [{"runner": life.name, "at": life.killed} for life in lives if life.how == "died"]
    slots_report = census_report(runs, lives, census, shape, registry, runner_of)
    report = {
        "tasks": {
            "created": len(created), "completed": len(completed), "failed": len(failed), "failed_tasks": failed,
            "lost": len(missing) + len(not_final), "missing": missing, "not_final": not_final,
            "extra": sorted(set(status) - set(created)),
            "completed_never_started": [i for i in completed if i not in per_task],
        },
        "executions": {
            "started": len(runs), "ended": sum(e.how == "end" for e in runs),
            "terminated": sum(e.how == "term" for e in runs), "killed": sum(e.how is None for e in runs),
            "runner_unknown": sum(runner_of(e) is None for e in runs),
            "ran_to_their_end_after_their_runner_died": outlived,
        },
        "faults": {
            "runner_kills": {kind: sum(life.how == kind for life in lives) for kind in KILLED},
            "runner_deaths_on_their_own": died,
            "injected": [{"kind": f.kind, "seconds": round(f.end - f.start, 2),
                          **{k: v for k, v in f.detail.items() if k != "charged"}} for f in faults],
        },
        "overlaps": {
            "pairs": len(overlaps), "tasks": len({o["task"] for o in overlaps}),
            "total_seconds": round(sum(o["seconds"] for o in overlaps), 2),
            "max_seconds": max((o["seconds"] for o in overlaps), default=0.0), "items": overlaps,
        },
        "stale_claim_runs": {"count": len(stale), "unchecked": unchecked, "items": stale},
        "reruns": {
            "total": len(reruns), "not_caused_by_a_killed_runner": len(bad_reruns),
            "by_cause": {c: sum(r["cause"] == c for r in reruns) for c in sorted({r["cause"] for r in reruns})},
            "items": bad_reruns,
        },
        "disk_full_attempts": {"ran": disk is not None, "count": sum(c["attempts"] for c in charged), "items": charged},
        "slots": slots_report,
        "recovery_seconds": {
            "count": len(recovery),
            "p50": round(statistics.median(recovery), 2) if recovery else None,
            "max": round(max(recovery), 2) if recovery else None,
        },
    }
    report["promises"] = {
        "no_task_lost": report["tasks"]["lost"] == 0,
        "no_overlapping_executions": not overlaps,
        "no_stale_claim_runs": not stale,
        "no_reruns_without_a_killed_runner": not bad_reruns,
        "no_attempts_charged_by_full_disk": not charged,
        "every_slot_alive": slots_report["dead_slots"] == 0 and not died,
    }
    return report


def census_report(
    runs: list[Execution], lives: list[RunnerLife], census: list[int], shape: tuple[int, int],
    registry: list[dict[str, Any]], runner_of: Callable[[Execution], RunnerLife | None],
) -> dict[str, Any]:
    """Per runner (``shape``: runners, slots each) at the end: how many census tasks it ran at once (each waits for
    all to start, so a runner whose slots all work runs ``slots`` of them together) and what its heartbeat says
    (``slots_alive``, when the runner reports it, counts too); a runner not running at the end has all slots dead."""
    runners, slots = shape
    info = {row["id"]: row.get("info") for row in registry}
    wanted = set(census)
    rows = []
    for number in range(runners):
        life = next((x for x in lives if x.slot == number and x.killed is None), None)
        mine = [e for e in runs if e.task in wanted and life is not None and runner_of(e) is life]
        beat = info.get(life.runner_id) if life else None
        said = beat.get("slots_alive") if isinstance(beat, dict) else None
        rows.append({"runner": life.name if life else f"runner {number} (not running)", "census_runs": len(mine),
                     "at_once": max_concurrent(mine), "heartbeat_info": beat,
                     "dead": max(slots - max_concurrent(mine) if census else 0,
                                 slots - said if isinstance(said, int) else 0, 0)})
    dead = sum(row["dead"] for row in rows)
    return {"census_tasks": len(census), "runners": rows, "dead_slots": dead}


def render(report: dict[str, Any]) -> str:
    """The report as an operator reads it; the figures that must be 0 in capitals."""
    s, t, e, f = report["settings"], report["tasks"], report["executions"], report["faults"]
    o, st, r, d, sl = (report["overlaps"], report["stale_claim_runs"], report["reruns"], report["disk_full_attempts"],
                       report["slots"])
    rec = report["recovery_seconds"]

    def secs(value: float | None) -> str:
        return "n/a" if value is None else f"{value}s"

    def detail(fault: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in fault.items() if k not in ("kind", "seconds"))

    kills = ", ".join(f"{k} {n}" for k, n in f["runner_kills"].items())
    lines = [
        (f"chaos on {s['store']}: {t['created']} tasks, {s['runners']} runners x {s['slots']} slots, wall "
         f"{report['wall_seconds']}s"),
        (f"settings: lease {s['lease_seconds']}s, reaper every {s['reap_interval']}s, outage {s['outage_seconds']}s, "
         f"gap {s['gap_seconds']}s, restart pause {s['restart_pause']}s, seed {s['seed']}, short tasks {s['sleep']}s, "
         f"long tasks {s['long_seconds']}s (share {s['long_share']}), faults {','.join(s['faults'])}"),
        f"runner SIGKILLs: {kills}",
    ]
    lines += [f"  {x['kind']} {x['seconds']}s: {detail(x)}" for x in f["injected"]]
    lines += [
        (f"tasks: completed {t['completed']}, failed {t['failed']}, LOST {t['lost']} (missing {t['missing']}, "
         f"not final {t['not_final']}), extra {t['extra']}, completed never started {t['completed_never_started']}"),
        (f"executions: {e['started']} started, {e['ended']} ran to their end, {e['terminated']} stopped by "
         f"SIGTERM, {e['killed']} killed; runner unknown {e['runner_unknown']}; left running at the end "
         f"{report['left_running']}; ran to their end after their runner died "
         f"{len(e['ran_to_their_end_after_their_runner_died'])}"),
        (f"OVERLAPPING EXECUTIONS: {o['pairs']} pairs on {o['tasks']} tasks, {o['total_seconds']}s in all, longest "
         f"{o['max_seconds']}s"),
        (f"STALE-CLAIM RUNS: {st['count']} (runs the API could not be asked about and no journal evidence: "
         f"{st['unchecked']})"),
        (f"re-runs: {r['total']} ({', '.join(f'{k} {n}' for k, n in r['by_cause'].items()) or 'none'}); "
         f"NOT CAUSED BY A KILLED RUNNER: {r['not_caused_by_a_killed_runner']}"),
        ("ATTEMPTS CHARGED BY THE FULL DISK: " + (str(d["count"]) if d["ran"] else "not measured (disk_full not run)")),
        (f"slots: DEAD {sl['dead_slots']} (census of {sl['census_tasks']} tasks); runners that DIED ON THEIR OWN "
         f"{len(f['runner_deaths_on_their_own'])}"),
    ]
    lines += [f"  {x['runner']}: {x['at_once']} census tasks at once ({x['census_runs']} in all), dead {x['dead']}, "
              f"heartbeat {x['heartbeat_info']}" for x in sl["runners"]]
    lines.append(f"recovery, runner death -> its task running again: p50 {secs(rec['p50'])}, max {secs(rec['max'])} "
                 f"over {rec['count']} runs")
    lines += [f"  failed: task {x['id']} after {x['attempts']} attempts ({x['step']})" for x in t["failed_tasks"]]
    lines += [f"  overlap: task {x['task']} runs {x['runs']} for {x['seconds']}s ({x['cause']})" for x in o["items"]]
    lines += [f"  stale: task {x['task']} run {x['run']} on {x['runner']}: {'; '.join(x['reasons'])}"
              for x in st["items"]]
    lines += [f"  re-run: task {x['task']} run {x['run']} after run {x['after_run']} on {x['previous_runner']} "
              f"({x['cause']})" for x in r["items"]]
    lines += [f"  disk-full attempt: task {x['task']} +{x['attempts']} attempts, +{x['claims']} claims, "
              f"{x['runs']} runs in the window" for x in d["items"]]
    lines += [f"  died: {x['runner']} at {x['at']:.3f}" for x in f["runner_deaths_on_their_own"]]
    lines += [f"  outlived: task {x['task']} run {x['run']} of {x['runner']} started {x['started_after_death']}s and "
              f"ended {x['ended_after_death']}s after its runner died"
              for x in e["ran_to_their_end_after_their_runner_died"]]
    lines.append("promises: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["promises"].items()))
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------------------------
def say(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)


class Chaos:
    """The processes, the feeder and the faults of one run on one store."""

    def __init__(self, args: argparse.Namespace, work: Path, store: str, store_env: dict[str, str],
                 postgres: PostgresServer | None) -> None:
        self.args = args
        self.work = work
        self.store = store
        self.postgres = postgres
        self.rng = random.Random(args.seed)
        (work / "workspace").mkdir(parents=True)
        (work / "runs").mkdir()
        (work / "flags").mkdir()
        self.script = work / "chaos_task.py"
        self.script.write_text(TASK_SCRIPT)
        self.log = EventLog(work / "events.log")
        self.homes = work / "homes"
        self.homes.mkdir()
        self.mounted = False
        timing = {"COHERENCE_LEASE_SECONDS": str(args.lease), "COHERENCE_REAP_INTERVAL": str(args.reap_interval)}
        self.api = ApiProcess(work / "api-home", env={**timing, **store_env, "COHERENCE_LOG_LEVEL": "WARNING"})
        inherited = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "COHERENCE_HOME")}
        self.runner_env = {**inherited, **timing, "COHERENCE_WORKSPACE": str(work / "workspace")}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # slot -> live runner process
        self.lives: list[RunnerLife] = []
        self.restart_at: dict[int, float] = {}  # slot -> monotonic time to restart it
        self.faults: list[Fault] = []
        self.skipped: dict[str, str] = {}  # fault -> why it was not injected
        self.api_up = False
        self.feeding = True
        self.left_running = 0
        self.created: list[int] = []
        self.census: list[int] = []
        self.lengths: dict[int, float] = {}
        self.started = time.monotonic()
        self.next_progress = self.started + PROGRESS_EVERY
        self.fed_at = 0.0
        self.http = httpx.Client(timeout=5)

    def say(self, message: str) -> None:
        say(f"{self.store}: {message}", self.started)

    def note(self, what: str) -> None:
        """One line of faults.log: the raw record the report can be checked against."""
        with open(self.work / "faults.log", "a", encoding="utf-8") as faults:
            faults.write(f"{time.time():.6f} {what}\n")

    # --- processes ------------------------------------------------------------------------------------------------
    def mount_homes(self) -> None:
        """The runners' homes on one small tmpfs, so the disk-full fault can fill it (needs root)."""
        if "disk_full" not in self.args.faults:
            return
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.args.disk_mb}m", "tmpfs",
                                 str(self.homes)], capture_output=True, text=True, check=False)
        self.mounted = result.returncode == 0
        if not self.mounted:
            self.skipped["disk_full"] = f"cannot mount a tmpfs: {result.stderr.strip() or result.returncode}"

    def command(self, seconds: float, census: int = 0) -> str:
        return shlex.join([sys.executable, str(self.script), str(self.log.path), str(self.work / "runs"),
                           f"{seconds:.2f}", str(BEAT), self.api.url, str(self.work / "flags"), str(census)])

    def start_runner(self, slot: int) -> None:
        gen = sum(life.slot == slot for life in self.lives)
        home = self.homes / f"runner-{slot}"
        life = RunnerLife(slot, gen, 0, time.time())
        with open(self.work / f"runner-{slot}.out", "ab") as out:  # outside the tmpfs: readable when it is full
            proc = subprocess.Popen(
                [sys.executable, "-m", "coherence_network.cli", "runner", "--workers", str(self.args.slots),
                 "--interval", str(self.args.runner_interval), "--runner-id", life.runner_id],
                env={**self.runner_env, "COHERENCE_HOME": str(home), "AGENT_API_BASE": self.api.url},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        life.pid = proc.pid
        self.procs[slot] = proc
        self.lives.append(life)
        self.note(f"runner_start {slot}.{gen} pid {proc.pid}")

    def life_of(self, proc: subprocess.Popen[bytes]) -> RunnerLife:
        return next(life for life in self.lives if life.pid == proc.pid)

    def kill_runner(self, slot: int, how: str) -> RunnerLife:
        """SIGKILL the runner's whole process group; it is started again after --restart-pause."""
        proc = self.procs.pop(slot)
        life = self.life_of(proc)
        life.killed, life.how = time.time(), how
        self.note(f"{how} {slot}.{life.gen} pid {proc.pid}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.restart_at[slot] = time.monotonic() + self.args.restart_pause
        self.say(f"SIGKILL {life.name} ({how})")
        return life

    def reap_runners(self) -> None:
        """Runners that exited: SIGKILLed by a task's killer (runner_delivering), else died on their own."""
        dead = [(slot, proc) for slot, proc in self.procs.items() if proc.poll() is not None]
        self.log.read()  # after the poll: a task's killer writes its line before it kills
        for slot, proc in dead:
            del self.procs[slot]
            life = self.life_of(proc)
            life.killed = self.log.dkills.get(proc.pid, time.time())
            life.how = "runner_delivering" if proc.pid in self.log.dkills else "died"
            self.note(f"{life.how} {slot}.{life.gen} pid {proc.pid} exit {proc.returncode}")
            self.say(f"{life.name} is gone ({life.how}, exit {proc.returncode})")
            self.restart_at[slot] = time.monotonic() + self.args.restart_pause

    # --- the steady state -----------------------------------------------------------------------------------------
    def task_seconds(self) -> float:
        if self.rng.random() < self.args.long_share:
            return self.rng.uniform(*LONG_LEASES) * self.args.lease
        return self.rng.uniform(*self.args.sleep)

    def create(self, seconds: float, census: int = 0) -> int:
        response = self.http.post(f"{self.api.url}/api/agent/tasks", json={
            "direction": f"chaos {'census' if census else 'task'}", "task_type": TaskType.RUN.value,
            "command": self.command(seconds, census),
        })
        response.raise_for_status()
        task_id = int(response.json()["id"])
        self.created.append(task_id)
        self.lengths[task_id] = seconds
        return task_id

    def count(self) -> dict[str, int] | None:
        try:
            return self.http.get(f"{self.api.url}/api/agent/tasks/count", timeout=2).json()["by_status"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def feed(self) -> None:
        """Keep about one pending task per slot while the API is up and no API or store fault is on."""
        if not (self.feeding and self.api_up) or time.monotonic() < self.fed_at + 0.5:
            return
        self.fed_at = time.monotonic()
        by_status = self.count()
        if by_status is None:
            return
        want = self.args.runners * self.args.slots - by_status.get(TaskStatus.PENDING.value, 0)
        try:
            for _ in range(min(max(0, want), 10)):
                self.create(self.task_seconds())
        except httpx.HTTPError:
            pass

    def tick(self) -> None:
        for slot, at in list(self.restart_at.items()):
            if time.monotonic() >= at:
                del self.restart_at[slot]
                self.start_runner(slot)
        self.reap_runners()
        self.feed()
        if time.monotonic() >= self.next_progress:
            self.next_progress += PROGRESS_EVERY
            self.say(f"{len(self.created)} tasks created, {len(self.log.runs)} executions, "
                     f"{len(self.lives) - len(self.procs)} runner deaths so far")

    def wait(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Keep the runners, the feeder and the journal going for ``seconds``; True as soon as ``until()`` holds."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.tick()
            if until is not None and until():
                return True
            time.sleep(TICK)
        return False

    # --- faults ---------------------------------------------------------------------------------------------------
    def busy(self) -> list[int]:
        """Slots whose runner runs a task now."""
        self.log.read()
        pids = {proc.pid: slot for slot, proc in self.procs.items()}
        return sorted({pids[p] for e in self.log.alive() for p in e.ancestors if p in pids})

    def fault_runner_busy(self) -> None:
        if not self.wait(2 * self.args.lease, lambda: bool(self.busy())):
            return self.skip("runner_busy", "no runner was busy")
        self.kill_runner(self.rng.choice(self.busy()), "runner_busy")

    def fault_runner_delivering(self) -> None:
        flag = self.work / "flags" / "kill-at-end"
        flag.touch()
        deaths = sum(life.how == "runner_delivering" for life in self.lives)
        if not self.wait(4 * self.args.lease + LONG_LEASES[1] * self.args.lease,
                         lambda: sum(life.how == "runner_delivering" for life in self.lives) > deaths):
            flag.unlink(missing_ok=True)
            self.skip("runner_delivering", "no task took the flag, or its killer did not report")

    def unstarted_claims(self) -> dict[str, list[list[int]]]:
        """Runner id -> [task, token] of the claims the API says it holds whose run has not started."""
        try:
            items = self.http.get(f"{self.api.url}/api/agent/tasks", timeout=2, params={
                "status": TaskStatus.RUNNING.value, "limit": 500}).json()["items"]
        except (httpx.HTTPError, ValueError, KeyError):
            return {}
        self.log.read()
        started = self.log.started_claims()
        held: dict[str, list[list[int]]] = {}
        for task in items:
            if task.get("claimed_by") and (task["id"], task["claim_token"]) not in started:
                held.setdefault(task["claimed_by"], []).append([task["id"], task["claim_token"]])
        return held

    def fault_runner_claiming(self) -> None:
        chosen: dict[str, Any] = {}

        def holding() -> bool:
            live = {self.life_of(proc).runner_id: slot for slot, proc in self.procs.items()}
            held = {rid: claims for rid, claims in self.unstarted_claims().items() if rid in live}
            if held:
                most = max(held, key=lambda rid: len(held[rid]))
                chosen.update(slot=live[most], claims=held[most])
            return bool(held)

        if not self.wait(6 * self.args.lease, holding):
            return self.skip("runner_claiming", "no runner was seen holding a claim it had not started")
        life = self.kill_runner(chosen["slot"], "runner_claiming")
        self.note(f"runner_claiming {life.name} held unstarted claims {chosen['claims']}")
        self.faults.append(Fault("runner_claiming", life.killed or 0.0, life.killed or 0.0,
                                 {"runner": life.name, "unstarted_claims": chosen["claims"]}))

    def api_gone(self, kind: str) -> float:
        self.api_up = False
        self.note(f"{kind} start")
        return time.time()

    def api_back(self, kind: str, start: float, **detail: Any) -> None:
        self.api_up = True
        self.faults.append(Fault(kind, start, time.time(), detail, self.args.lease + 1))
        self.note(f"{kind} end")
        self.say(f"{kind}: back after {time.time() - start:.1f}s")

    def fault_api_kill(self) -> None:
        start = self.api_gone("api_kill")
        self.api.kill()
        self.say(f"SIGKILL the API; back in {self.args.outage:g}s")
        self.wait(min(2.0, self.args.outage / 2))  # the slots' claims fail: they are in claim backoff now
        killed = self.kill_runner(self.rng.choice(sorted(self.procs)), "runner_backoff").name if self.procs else None
        self.wait(max(0.0, self.args.outage - (time.time() - start)))
        self.api.start()
        self.api_back("api_kill", start, runner_killed_in_backoff=killed)

    def fault_api_term(self) -> None:
        start = self.api_gone("api_term")
        assert self.api.proc is not None
        proc = self.api.proc
        os.killpg(proc.pid, signal.SIGTERM)
        exited = self.wait(SIGTERM_WAIT, lambda: proc.poll() is not None)
        seconds = round(time.time() - start, 2)
        if not exited:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.say(f"API SIGTERM: exited after {seconds}s" + ("" if exited else " (no: SIGKILLed)"))
        self.api.start()
        self.api_back("api_term", start, exit_seconds=seconds if exited else None)

    def fault_api_stop(self) -> None:
        start = self.api_gone("api_stop")
        assert self.api.proc is not None
        os.killpg(self.api.proc.pid, signal.SIGSTOP)
        self.say(f"SIGSTOP the API for {self.args.outage:g}s")
        self.wait(self.args.outage)
        os.killpg(self.api.proc.pid, signal.SIGCONT)
        self.api_back("api_stop", start)

    def fault_store_outage(self) -> None:
        if self.store == "postgresql" and self.postgres is None:
            return self.skip("store_outage", "an external --database-url cannot be stopped by the bench")
        start = self.api_gone("store_outage")
        if self.postgres is not None:
            self.postgres.stop()
            self.say(f"PostgreSQL stopped for {self.args.outage:g}s")
            self.wait(self.args.outage)
            self.postgres.resume()
            return self.api_back("store_outage", start, how="PostgreSQL stopped, then started")
        holder = subprocess.Popen(
            [sys.executable, "-c", ("import sqlite3, sys, time\n"
              "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "db.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(float(sys.argv[2]))\n"
              "db.execute('ROLLBACK')\n"), str(self.api.home / "coherence.db"), str(self.args.outage)],
            stdout=subprocess.PIPE)
        assert holder.stdout is not None
        locked = holder.stdout.readline().strip() == b"locked"
        self.say(f"SQLite write lock held for {self.args.outage:g}s" + ("" if locked else ": COULD NOT LOCK"))
        self.wait(self.args.outage + 5, lambda: holder.poll() is not None)
        holder.wait()
        self.api_back("store_outage", start, how="SQLite write lock held (BEGIN EXCLUSIVE)" if locked
                      else "SQLite lock not taken")

    def snapshot(self) -> dict[int, tuple[int, int]]:
        return {t["id"]: (t.get("attempts") or 0, t.get("claim_token") or 0) for t in self.task_list()}

    def fault_disk_full(self) -> None:
        if not self.mounted:
            return self.skip("disk_full", self.skipped.get("disk_full", "the homes are not on a tmpfs"))
        before = self.snapshot()
        start = time.time()
        self.note("disk_full start")
        filler = self.homes / "filler"
        with open(filler, "wb", buffering=0) as out:
            for chunk in (1 << 20, 4096, 1):
                try:
                    while out.write(b"\0" * chunk):
                        pass
                except OSError:
                    pass
        self.say(f"runners' disk full ({filler.stat().st_size >> 20} MiB filler) for {self.args.outage:g}s")
        self.wait(self.args.outage)
        filler.unlink()
        freed = time.time()
        self.note("disk_full end")
        self.wait(self.args.lease + 2 * self.args.reap_interval + 1)  # a lease lost in the window is charged by now
        after = self.snapshot()
        settled = time.time()
        self.log.read()
        charged = []
        for task_id, (attempts, claims) in sorted(after.items()):
            was = before.get(task_id, (0, 0))
            if attempts > was[0]:
                runs = sum(e.task == task_id and start <= e.start <= settled for e in self.log.runs.values())
                charged.append({"task": task_id, "attempts": attempts - was[0], "claims": claims - was[1],
                                "runs": runs})
        self.faults.append(Fault("disk_full", start, freed, {"settled_after": round(settled - freed, 2),
                                                             "charged": charged}, self.args.lease + 1))

    def skip(self, fault: str, why: str) -> None:
        self.skipped[fault] = why
        self.note(f"{fault} skipped: {why}")
        self.say(f"{fault} not injected: {why}")

    # --- the whole run --------------------------------------------------------------------------------------------
    def plan(self) -> list[str]:
        kills = [kind for _ in range(self.args.kills) for kind in KILL_KINDS if kind in self.args.faults]
        return kills + [kind for kind in FAULTS if kind not in KILL_KINDS and kind in self.args.faults]

    def settled(self) -> int:
        by_status = self.count()
        return -1 if by_status is None else sum(by_status.get(s.value, 0) for s in SETTLED_STATUSES)

    def run(self) -> dict[str, Any]:
        args = self.args
        self.mount_homes()
        self.api.start()
        self.api_up = True
        for slot in range(args.runners):
            self.start_runner(slot)
        self.say(f"{args.runners} runners x {args.slots} slots; faults {self.plan()}")
        self.wait(args.gap)
        for kind in self.plan():
            getattr(self, f"fault_{kind}")()
            self.wait(args.gap)
        self.feeding = False
        deadline = time.monotonic() + args.timeout
        self.say("faults done; the queue drains")
        self.wait(max(0.0, deadline - time.monotonic()), lambda: self.settled() >= len(self.created))
        self.wait(args.restart_pause + 1, lambda: not self.restart_at)
        wanted = args.runners * args.slots
        self.census = [self.create(args.census_seconds, census=wanted) for _ in range(wanted)]
        self.say(f"census: {wanted} tasks, one per slot")
        self.wait(args.census_seconds * 3 + 30, lambda: self.settled() >= len(self.created))
        self.log.read()
        self.wait(LONG_LEASES[1] * args.lease + 5, lambda: not self.log.alive())
        tasks = self.task_list()
        registry = self.http.get(f"{self.api.url}/api/agent/runners", timeout=10).json()["items"]
        return self.finish(tasks, registry)

    def task_list(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self.http.get(f"{self.api.url}/api/agent/tasks", timeout=30,
                                 params={"order": "oldest", "limit": 500, "offset": len(items)}).json()
            items += page["items"]
            if not page["items"] or len(items) >= page["total"]:
                return items

    def finish(self, tasks: list[dict[str, Any]], registry: list[dict[str, Any]]) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        self.stop()
        self.log.read()
        a = self.args
        report: dict[str, Any] = {"settings": {
            "store": self.store, "runners": a.runners, "slots": a.slots, "kills": a.kills, "faults": self.plan(),
            "skipped": self.skipped, "lease_seconds": a.lease, "reap_interval": a.reap_interval,
            "runner_interval": a.runner_interval, "restart_pause": a.restart_pause, "outage_seconds": a.outage,
            "gap_seconds": a.gap, "seed": a.seed, "sleep": list(a.sleep), "long_share": a.long_share,
            "long_seconds": [x * a.lease for x in LONG_LEASES], "beat_seconds": BEAT, "disk_mb": a.disk_mb,
        }, "wall_seconds": round(wall, 1)}
        started = self.log.started_claims()
        for fault in self.faults:
            if fault.kind == "runner_claiming":
                fault.detail["never_ran_with_that_token"] = [c for c in fault.detail["unstarted_claims"]
                                                             if tuple(c) not in started]
        report.update(analyse(list(self.log.runs.values()), self.lives, self.faults, tasks, self.created,
                              self.census, (a.runners, a.slots), registry))
        report["left_running"] = self.left_running
        return report

    def stop(self) -> None:
        """Stop the runners and the API, then any task process still alive (counted: nothing should be), and
        unmount the runners' tmpfs. Safe to call again: the second call finds nothing left."""
        try:
            self._stop_processes()
        finally:
            if self.mounted:
                subprocess.run(["umount", "-l", str(self.homes)], check=False, capture_output=True)
                self.mounted = False

    def _stop_processes(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        self.restart_at.clear()
        if self.api.proc is not None and self.api.proc.poll() is None:
            os.killpg(self.api.proc.pid, signal.SIGCONT)
        self.api.stop()
        self.http.close()
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


def parse_faults(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAULTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown faults {unknown}; known: {','.join(FAULTS)}")
    return names


QUICK = {"runners": 4, "slots": 2, "kills": 1, "lease": 3.0, "reap_interval": 0.3, "runner_interval": 0.5,
         "restart_pause": 0.5, "sleep": (0.1, 0.8), "long_share": 0.05, "outage": 4.5, "gap": 3.0,
         "census_seconds": 8.0, "timeout": 60.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["sqlite", "postgres", "postgresql", "both"], default="sqlite",
                        help="sqlite: a fresh file; postgres(ql): a throwaway server from the installed binaries "
                             "(tests/support/postgres.py) unless --database-url is given; both: one after the other")
    parser.add_argument("--database-url", default="", help="an existing empty PostgreSQL database to use instead "
                        "(store_outage is then skipped)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run for the integration test: lease 3 s, outages 4.5 s, one kill of each kind "
                             "(options given explicitly still win)")
    parser.add_argument("--faults", type=parse_faults, default=list(FAULTS), metavar="A,B",
                        help=f"faults to inject, in this order (default all: {','.join(FAULTS)})")
    parser.add_argument("--runners", type=int, help="runner processes (default 4)")
    parser.add_argument("--slots", type=int, help="slots per runner, its --workers (default 2)")
    parser.add_argument("--kills", type=int, help="SIGKILLs of each runner kind (default 3)")
    parser.add_argument("--lease", type=float, help="COHERENCE_LEASE_SECONDS (default 6)")
    parser.add_argument("--reap-interval", type=float, help="COHERENCE_REAP_INTERVAL (default 0.5)")
    parser.add_argument("--runner-interval", type=float, help="runner --interval, its long poll (default 0.5)")
    parser.add_argument("--restart-pause", type=float, help="seconds before a dead runner is started again (1)")
    parser.add_argument("--outage", type=float, help="seconds an API, store or disk fault lasts (default 1.5 leases)")
    parser.add_argument("--gap", type=float, help="seconds between faults (default a lease + 1)")
    parser.add_argument("--sleep", type=parse_range, metavar="MIN,MAX", help="how long a short task runs (0.2,2)")
    parser.add_argument("--long-share", type=float, help="share of tasks that run 2.5-3.5 leases (default 0.08)")
    parser.add_argument("--census-seconds", type=float, help="longest a census task waits for the others (20)")
    parser.add_argument("--disk-mb", type=int, default=64, help="size of the runners' tmpfs (default 64)")
    parser.add_argument("--seed", type=int, default=18, help="seeds task lengths and fault targets")
    parser.add_argument("--timeout", type=float, help="longest wait for the queue to drain (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (events.log, faults.log, logs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    args = parser.parse_args(argv)
    defaults = {"runners": 4, "slots": 2, "kills": 3, "lease": 6.0, "reap_interval": 0.5, "runner_interval": 0.5,
                "restart_pause": 1.0, "sleep": (0.2, 2.0), "long_share": 0.08, "census_seconds": 20.0,
                "timeout": 300.0}
    for name, value in (QUICK if args.quick else defaults).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.outage = args.outage if args.outage is not None else 1.5 * args.lease
    args.gap = args.gap if args.gap is not None else args.lease + 1
    args.store = "postgresql" if args.store == "postgres" else args.store
    if args.database_url and args.store != "postgresql":
        parser.error("--database-url needs --store postgresql")
    if args.runners < 1 or args.slots < 1 or args.kills < 0 or args.lease <= 0 or args.reap_interval <= 0:
        parser.error("--runners and --slots must be at least 1, --kills at least 0, --lease and --reap-interval > 0")
    if not 0 <= args.long_share <= 1:
        parser.error("--long-share is a share between 0 and 1")
    return args


def run_on(store: str, args: argparse.Namespace) -> dict[str, Any]:
    """One whole run on one store, in a fresh work folder; nothing is left behind, also when interrupted."""
    work = Path(tempfile.mkdtemp(prefix=f"coherence-chaos-{store}-"))
    postgres = None
    chaos: Chaos | None = None
    try:
        store_env = {"DATABASE_URL": ""}  # SQLite: the file in the API's home, whatever the caller's shell says
        if store == "postgresql":
            if args.database_url:
                store_env["DATABASE_URL"] = args.database_url
            else:
                postgres = PostgresServer(work / "pg").start()
                store_env["DATABASE_URL"] = postgres.new_database()
        chaos = Chaos(args, work, store, store_env, postgres)
        return chaos.run()
    finally:
        if chaos is not None:
            chaos.stop()
        if postgres is not None:
            postgres.stop()
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    reports = [run_on(store, args) for store in stores]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    else:
        print("\n\n".join(render(report) for report in reports))
    return 0 if all(all(report["promises"].values()) for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
