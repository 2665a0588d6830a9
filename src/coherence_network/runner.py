"""Agent runner: claims tasks from the API and runs each one as the agent protocol in DESIGN.md says.

Each worker slot is a thread that claims (long-polling, so dispatch is immediate), runs the task's command in its
own process group with a timeout, streams the output to ``var/logs/task_{id}.log``, heartbeats the lease, and
delivers the result. The process group never outlives the runner (see ``taskgroups``). A result that cannot be
delivered (API down) waits in ``var/run/runner_outbox/`` and is delivered when the API is back, also by a restarted
runner; nothing a task produced is lost. While the API is down, heartbeats and deliveries are retried about once a
second, so leases are renewed and results delivered as soon as it answers again.

A task never sees the runner's secrets: what it is started with is decided in ``task_env``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from coherence_network import __version__
from coherence_network.cleanup import prune_task_files
from coherence_network.client import ApiClient, ApiConflict, ApiError, ApiNotFound, ApiUnavailable
from coherence_network.contract import Task, TaskStatus
from coherence_network.errors import CoherenceError
from coherence_network.logfiles import RUN_FILES, remove_dead_writers_temps, task_log_path, write_json_atomic
from coherence_network.settings import Settings
from coherence_network.task_env import build_argv, task_environment
from coherence_network.taskgroups import (
    NewerRunRecorded,
    TaskGroup,
    TaskStartError,
    kill_orphaned_task_groups,
    stop_previous_runs,
)

log = logging.getLogger("coherence.runner")

DECISION_MARKER = "NEEDS_DECISION:"
MAX_CLAIM_WAIT = 60.0  # the API's limit on one long-poll claim
DEFAULT_CLAIM_WAIT = 30.0  # an idle slot's long poll: the API answers at once when work comes, so long costs nothing
STEP_CHARS = 200
COMMAND_CHARS = 500
WATCH_SECONDS = 0.2
RETRY_SECONDS = 1.0  # pace of heartbeats and deliveries while the API does not answer
CLAIM_MARGIN = 0.25  # a claim starts only within the first 3/4 of its lease, counted from when its answer arrived
STARTED_MEMORY = 10_000  # tasks whose newest started claim token a runner remembers (never to start an older one)
SLOT_DIED = 3  # the runner's exit code when a slot thread died


@dataclass
class TaskResult:
    """What a run produced; persisted in the outbox until the API has it."""

    task_id: int
    claim_token: int
    status: TaskStatus
    exit_code: int | None
    output: str
    decision_prompt: str | None = None

    def __post_init__(self) -> None:
        self.status = TaskStatus(self.status)  # read back from an outbox file as a string; a bad one is refused


class ClaimLost(CoherenceError):
    """The API no longer holds our claim (lease expired and the task went to another runner)."""


def _utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def lease_of(task: Task, default: float) -> float:
    """The lease the API granted with this claim (the API's setting, not ours), so heartbeats keep pace with it."""
    if task.lease_expires_at is None or task.started_at is None:
        return default
    granted = (task.lease_expires_at - task.started_at).total_seconds()
    return granted if granted > 0 else default


class RunnerFault(CoherenceError):
    """This host could not start the task: its log, prompt file or process-group record could not be written, or the
    guard could not start (a full or read-only disk, no processes left). Not the task's fault: it goes back to pending
    without costing an attempt, and the slot waits before it claims again, so a full disk does not churn the queue."""


@dataclass(frozen=True)
class Claim:
    """A claimed task and when the claim's answer arrived, by this host's monotonic clock (never compared with
    another host's clock): the lease the API granted runs out about a lease after that."""

    task: Task
    arrived: float

    def usable_until(self, default_lease: float) -> float:
        """The last moment this claim may start: its lease less a quarter (CLAIM_MARGIN), for the time the answer
        took to arrive. Later, the lease may have run out and the task may be running elsewhere."""
        return self.arrived + lease_of(self.task, default_lease) * (1 - CLAIM_MARGIN)


class TaskLog:
    """A task's log file. Until the task starts, a write that fails is a RunnerFault (nothing has run: the task is
    released); once it runs, a failed write (the disk filled up) is noted once and the run goes on, its output still
    reaching the tail the API gets."""

    def __init__(self, path: Path, task_id: int) -> None:
        self.task_id = task_id
        self.error: OSError | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file: IO[str] = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise RunnerFault(f"cannot open the task log {path}: {exc}") from exc

    def write(self, text: str, *, strict: bool = False) -> None:
        if self.error is not None:
            return
        try:
            self.file.write(text)
            self.file.flush()
        except OSError as exc:
            self.error = exc
            if strict:
                raise RunnerFault(f"cannot write the task log: {exc}") from exc
            log.warning("task %s: its log cannot be written (%s); the run goes on, its output reaches the API only",
                        self.task_id, exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # what a full disk did not take is dropped; the file is closed anyway
            self.file.close()


class TaskRun:
    """One run of one task: process group, log file, output tail, decision question."""

    def __init__(self, claim: Claim, settings: Settings, runner_id: str) -> None:
        self.task = claim.task
        self.claimed_at = claim.arrived
        self.settings = settings
        self.runner_id = runner_id
        self.tail: deque[str] = deque()
        self.tail_bytes = 0
        self.last_line = ""
        self.question: str | None = None
        self.group: TaskGroup | None = None
        self.logfile: TaskLog | None = None
        self.timed_out = False
        self.stopped = False  # killed because the runner is shutting down: the task is released, not failed
        self.output_lock = threading.Lock()  # the pump thread and the watching thread both write the log
        self.environment = task_environment(settings, os.environ)

    @property
    def timeout(self) -> float:
        return float(self.task.timeout_seconds or self.settings.agent_task_timeout)

    def _keep(self, line: str) -> None:
        self.tail.append(line)
        self.tail_bytes += len(line)
        limit = self.settings.coherence_output_tail_bytes
        while self.tail_bytes > limit and len(self.tail) > 1:
            self.tail_bytes -= len(self.tail.popleft())
        if self.tail_bytes > limit:  # one line longer than the tail: its end, so the finish fits the body limit
            self.tail[0] = self.tail[0][-limit:]
            self.tail_bytes = limit
        if line.strip():
            self.last_line = line.strip()[:STEP_CHARS]
        if line.lstrip().startswith(DECISION_MARKER):
            self.question = line.lstrip()[len(DECISION_MARKER):].strip() or "(no question given)"

    def _output(self, line: str) -> None:
        """One line of the task's output (or the runner's note about it), masked: to the log file and the tail."""
        line = self.environment.mask(line)
        with self.output_lock:
            if self.logfile is not None:
                self.logfile.write(line)
            self._keep(line)

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._output(raw.decode("utf-8", errors="replace"))

    def execute(self, beat: Callable[[str], bool], stop_now: threading.Event,
                logged: Callable[[], None] = lambda: None) -> TaskResult:
        """Run the task to its end; ``beat()`` is called every heartbeat interval and may raise ClaimLost, and
        ``logged()`` once the log's header is written (this host takes writes).

        RunnerFault when this host cannot start it; ClaimLost (nothing started) when a newer run of the task is
        recorded on this host. A beat that returns False (the API did not answer) is tried again after
        RETRY_SECONDS, not a whole interval later, so a lease is renewed as soon as the API is back."""
        self.logfile = TaskLog(task_log_path(self.settings, self.task.id), self.task.id)
        try:
            return self._execute(self.logfile, beat, stop_now, logged)
        finally:
            self.logfile.close()

    def _execute(self, logfile: TaskLog, beat: Callable[[str], bool], stop_now: threading.Event,
                 logged: Callable[[], None]) -> TaskResult:
        task = self.task
        started = time.monotonic()
        logfile.write(f"=== task {task.id} type={task.task_type} run={task.claim_token} runner={self.runner_id}\n"
                      f"=== start: {_utc()}\n", strict=True)
        logged()
        try:  # never two runs of one task at once, and never an older claim's run after a newer one
            previous = stop_previous_runs(self.settings, task.id, task.claim_token)
        except NewerRunRecorded as exc:
            logfile.write(f"=== not started: {exc}\n")
            raise ClaimLost(str(exc)) from exc
        for line in previous:
            log.warning("task %s: stopped the previous run first: %s", task.id, line)
            logfile.write(f"=== stopped the previous run first: {line}\n")
        try:
            argv = build_argv(task, self.settings, RUN_FILES["prompts/"].path(self.settings))
        except ValueError as exc:  # the task's own fault: it fails
            return self._not_started(exc, started)
        except OSError as exc:
            raise RunnerFault(f"cannot write the task's prompt file: {exc}") from exc
        logfile.write(f"=== command: {self.environment.mask(shlex.join(argv))[:COMMAND_CHARS]}\n", strict=True)
        env = {**self.environment.env, "COHERENCE_TASK_ID": str(task.id), "COHERENCE_TASK_TYPE": task.task_type}
        env.pop("COHERENCE_DECISION", None)  # only this task's own decision, never one the runner inherited
        if task.decision:
            env["COHERENCE_DECISION"] = task.decision
        interval = max(0.2, lease_of(task, self.settings.coherence_lease_seconds) / 3)
        next_beat = self.claimed_at + interval  # the lease runs from the claim, not from this start
        if time.monotonic() >= next_beat and beat(self.last_line):
            # A slow way here (a loaded host, a handoff): the lease is renewed before the task starts, so no task
            # starts on a lease nearly spent; ClaimLost (nothing started) when the claim went meanwhile.
            next_beat = time.monotonic() + interval
        try:
            self.group = TaskGroup(argv, self.settings, task, self.runner_id,
                                   cwd=self.settings.coherence_workspace, env=env)
        except TaskStartError as exc:  # the guard ran but the task's program could not start: the task's fault
            return self._not_started(exc, started)
        except OSError as exc:
            raise RunnerFault(f"cannot start the task's guard: {exc}") from exc
        group, proc = self.group, self.group.proc
        pump = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        pump.start()
        try:
            while proc.poll() is None:
                if time.monotonic() - started > self.timeout:
                    self.timed_out = True
                    self._output(f"timed out after {self.timeout:g}s; stopping the process group\n")
                    group.stop(self.settings.agent_kill_grace_seconds)
                    break
                if stop_now.is_set():
                    self.stopped = True
                    self._output("runner is stopping: process group stopped, task back to pending\n")
                    group.stop(self.settings.agent_kill_grace_seconds)
                    break
                try:
                    proc.wait(WATCH_SECONDS)  # short, so a timeout or a stop is acted on promptly
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= next_beat:
                        renewed = beat(self.last_line)
                        next_beat = time.monotonic() + (interval if renewed else min(interval, RETRY_SECONDS))
        except ClaimLost as exc:
            self._output(f"=== claim lost ({exc}): process group stopped, result dropped\n")
            group.stop(self.settings.agent_kill_grace_seconds)
            raise
        finally:
            proc.wait()
            group.close()  # whatever the task left running in its group goes with it
            pump.join(10)
        return self._finish(started, proc.returncode)

    def _not_started(self, exc: Exception, started: float) -> TaskResult:
        self._output(f"cannot start the task: {exc}\n")
        return self._finish(started, None)

    def _finish(self, started: float, returncode: int | None) -> TaskResult:
        if self.stopped:
            status = TaskStatus.PENDING
        elif self.timed_out:
            status = TaskStatus.FAILED
        elif self.question is not None:  # the agent asked: its exit code only says it stopped to wait
            status = TaskStatus.NEEDS_DECISION
        else:
            status = TaskStatus.COMPLETED if returncode == 0 else TaskStatus.FAILED
        duration = time.monotonic() - started
        if self.logfile is not None:
            self.logfile.write(f"=== end: {_utc()} exit_code={returncode} duration={duration:.3f}s status={status}\n")
        return TaskResult(
            task_id=self.task.id,
            claim_token=self.task.claim_token,
            status=status,
            exit_code=returncode,
            output="".join(self.tail),
            decision_prompt=self.question if status is TaskStatus.NEEDS_DECISION else None,
        )


class Backoff:
    """A slot's wait after a failure: from RETRY_SECONDS, doubling up to ``limit``, until a success resets it."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.seconds = min(RETRY_SECONDS, limit)

    def wait(self, stop: threading.Event) -> None:
        stop.wait(self.seconds)
        self.seconds = min(self.seconds * 2, self.limit)

    def reset(self) -> None:
        self.seconds = min(RETRY_SECONDS, self.limit)


class Runner:
    """Worker slots, the runner heartbeat, the outbox and the graceful stop."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int = 1,
        interval: float = DEFAULT_CLAIM_WAIT,
        once: bool = False,
        types: list[str] | None = None,
        runner_id: str | None = None,
        grace: float | None = None,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.interval = interval
        self.once = once
        self.types = types or None
        self.runner_id = runner_id or f"{socket.gethostname()}:{os.getpid()}"
        self.grace = settings.coherence_runner_stop_grace_seconds if grace is None else grace
        self.stopping = threading.Event()  # no new claims
        self.kill_now = threading.Event()  # running tasks are stopped and released
        self.outbox = RUN_FILES["runner_outbox/"].path(settings)
        self.unsaved: dict[str, TaskResult] = {}  # results the outbox could not store (disk full): sent from memory
        self.runs: dict[int, TaskRun] = {}
        self.failed = 0
        self.lock = threading.Lock()
        self.delivering = threading.Lock()  # one delivery at a time, so a slot and the outbox flush never race
        self.attention = threading.Event()  # a result waits in the outbox: the heartbeat loop goes at once
        self.claiming = threading.Lock()  # one claim in flight per runner, for every free slot
        self.handoff: deque[Claim] = deque()  # claimed for a free slot that has not taken it yet
        self.newest: OrderedDict[int, int] = OrderedDict()  # task id -> the newest claim token this runner started
        self.working: set[int] = set()  # slots holding a task (running or delivering it); a stop waits for these
        self.pausing: set[int] = set()  # slots waiting out a failure before they claim again
        self.settled = threading.Condition(self.lock)  # notified when a slot lets go of its task
        self.blocked: dict[int, str] = {}  # slots waiting out a fault of this host (a full disk), with the fault
        self.last_error: str | None = None
        self.stop_reason: str | None = None  # why it stops, for its last heartbeat (the registry row says "stopped")
        self.slots: list[threading.Thread] = []
        self.slots_done: set[int] = set()  # slots that ended as they should (a stop, or --once with no work left)
        self.client = ApiClient(settings=settings, retries=2)
        self.pruned_at: float | None = None  # monotonic time of the last retention pass over task files

    # --- results ----------------------------------------------------------------------------------------
    def _outbox_path(self, result: TaskResult) -> Path:
        return self.outbox / f"task_{result.task_id}_{result.claim_token}.json"

    def deliver(self, result: TaskResult) -> bool:
        """Send a result; True when the API has it (or rejected it for good), False to try again later."""
        return self._deliver(result, claim_next=False)[0]

    def _deliver(self, result: TaskResult, *, claim_next: bool) -> tuple[bool, Claim | None]:
        """``deliver``; with ``claim_next`` the same call claims this runner's next task: (delivered, next claim)."""
        path = self._outbox_path(result)
        with self.delivering:
            if path.name not in self.unsaved and not path.exists():
                return True, None  # delivered meanwhile by another thread
            return self._send(result, claim_next)

    def _send(self, result: TaskResult, claim_next: bool) -> tuple[bool, Claim | None]:
        following = None
        fields: dict[str, Any] = {"output": result.output, "exit_code": result.exit_code,
                                  "decision_prompt": result.decision_prompt}
        try:
            if claim_next:
                _, task = self.client.finish_and_claim(result.task_id, result.claim_token, result.status,
                                                       runner_id=self.runner_id, types=self.types, **fields)
                following = Claim(task, time.monotonic()) if task is not None else None
            else:
                self.client.finish(result.task_id, result.claim_token, result.status, **fields)
        except (ApiConflict, ApiNotFound) as exc:
            log.warning("task %s: result dropped, the claim is no longer ours: %s", result.task_id, exc.detail)
        except ApiUnavailable as exc:
            log.warning("task %s: API unavailable, result kept in the outbox (%s)", result.task_id, exc.detail)
            return False, None
        except ApiError as exc:
            log.error("task %s: result rejected: %s", result.task_id, exc)
        else:
            log.info("task %s: %s (exit %s)", result.task_id, result.status, result.exit_code)
        path = self._outbox_path(result)
        with self.lock:
            self.unsaved.pop(path.name, None)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # a read-only disk: the next delivery of it is answered as already recorded
            self._note(f"outbox file {path.name} cannot be removed: {exc}")
        return True, following

    def flush_outbox(self) -> int:
        """Deliver every stored result (and those only in memory); returns how many are still waiting."""
        waiting = 0
        with self.lock:
            results = list(self.unsaved.values())
        for path in sorted(self.outbox.glob("task_*.json")):
            try:
                results.append(TaskResult(**json.loads(path.read_text())))
            except FileNotFoundError:
                continue  # delivered by its slot since the folder was listed
            except (ValueError, TypeError) as exc:
                log.error("outbox file %s is unreadable (%s); moved aside", path.name, exc)
                path.rename(path.with_suffix(".bad"))
        for result in results:
            if not self.deliver(result):
                waiting += 1
        return waiting

    def keep(self, result: TaskResult, *, claim_next: bool = False) -> Claim | None:
        """Persist a result before sending it, so neither an API outage nor a runner restart can lose it; with
        ``claim_next`` the delivery also claims this slot's next task (one call), returned when one came.

        When the outbox cannot be written (a full or read-only disk) the result is kept in memory and sent all the
        same: it is lost only if the runner also stops before the API answers."""
        path = self._outbox_path(result)
        try:
            write_json_atomic(path, asdict(result))
        except OSError as exc:
            self._note(f"task {result.task_id}: result not stored in the outbox ({exc}); kept in memory")
            with self.lock:
                self.unsaved[path.name] = result
        delivered, following = self._deliver(result, claim_next=claim_next)
        if not delivered:
            self.attention.set()
        return following

    def _release(self, claim: Claim, note: str = "") -> None:
        """Hand a claimed task back to pending: a release costs no attempt."""
        self.keep(TaskResult(claim.task.id, claim.task.claim_token, TaskStatus.PENDING, None, note))

    # --- one slot -----------------------------------------------------------------------------------------
    def _claim(self, number: int) -> Claim | None:
        """A task for slot ``number``: one another slot's claim brought, else a claim for every free slot at once.

        One claim is in flight per runner; the API holds it up to ``interval`` seconds and answers as soon as work
        exists, so an idle slot is always waiting on the API (dispatch is immediate) at next to no cost. A stop does
        not wait for it (see ``run``). A slot that holds a task (running it, or delivering its result) or waits out
        a failure is not free: no task is claimed for it to sit on while its lease runs out. Tasks claimed for the
        other free slots wait in ``handoff``; those slots are on their way into this call and take them at once."""
        with self.claiming:
            with self.lock:
                if self.handoff:
                    self.working.add(number)
                    return self.handoff.popleft()
                free = self.workers - len(self.working | self.pausing)
            if self.stopping.is_set():
                return None
            wait = 0.0 if self.once else min(self.interval, MAX_CLAIM_WAIT)
            if free <= 1:
                tasks = [task] if (task := self.client.claim(self.runner_id, types=self.types,
                                                             wait_seconds=wait)) else []
            else:
                tasks = self.client.claim_many(self.runner_id, free, types=self.types, wait_seconds=wait)
            arrived = time.monotonic()
            claims = [Claim(task, arrived) for task in tasks]
            with self.lock:
                self.handoff.extend(claims[1:])
                if claims:
                    self.working.add(number)  # at once, so no other claim counts this slot as free
            return claims[0] if claims else None

    def _pause(self, number: int, backoff: Backoff) -> None:
        """Slot ``number`` waits out a failure; meanwhile it is not free, so nothing is claimed for it."""
        with self.lock:
            self.pausing.add(number)
        try:
            backoff.wait(self.stopping)
        finally:
            with self.lock:
                self.pausing.discard(number)

    def _startable(self, claim: Claim) -> bool:
        """May this claim start? Not when its lease may have run out (it may be running elsewhere: it is released,
        or dropped if the API refuses), nor when this runner already started a newer claim of the task (dropped)."""
        task = claim.task
        with self.lock:
            newest = self.newest.get(task.id, 0)
            late = time.monotonic() - claim.usable_until(self.settings.coherence_lease_seconds)
            if task.claim_token > newest and late <= 0:
                self.newest[task.id] = task.claim_token
                self.newest.move_to_end(task.id)
                while len(self.newest) > STARTED_MEMORY:
                    self.newest.popitem(last=False)
                return True
        if task.claim_token <= newest:
            log.warning("task %s: run %s not started: this runner already started run %s of it", task.id,
                        task.claim_token, newest)
        else:
            log.warning("task %s: run %s not started: claimed %.1fs too long ago, its lease may have run out; "
                        "handing it back", task.id, task.claim_token, late)
            self._release(claim)
        return False

    def _run_one(self, claim: Claim, number: int) -> TaskResult | None:
        """Run a claimed task; its result (None when the claim was lost and the result dropped). RunnerFault when
        this host cannot start it."""
        task = claim.task
        run = TaskRun(claim, self.settings, self.runner_id)
        with self.lock:
            self.runs[task.id] = run
        log.info("task %s: claimed (%s, run %s)", task.id, task.task_type, task.claim_token)
        failing = False

        def beat(step: str) -> bool:
            """Renew the lease; False when the API did not answer (the run goes on, the beat is retried soon)."""
            nonlocal failing
            try:
                self.client.heartbeat(task.id, task.claim_token, current_step=step or None)
            except (ApiConflict, ApiNotFound) as exc:
                raise ClaimLost(str(exc.detail)) from exc
            except ApiError as exc:
                if not failing:  # once per outage, not once a second
                    log.warning("task %s: heartbeat failed (%s); still running, retrying every %gs",
                                task.id, exc, RETRY_SECONDS)
                failing = True
                return False
            if failing:
                log.info("task %s: heartbeat renewed the lease again", task.id)
            failing = False
            return True

        def unblock() -> None:
            with self.lock:
                self.blocked.pop(number, None)  # this slot's task log took its header: the disk takes writes

        try:
            result = run.execute(beat, self.kill_now, unblock)
        except ClaimLost as exc:
            log.warning("task %s: claim lost (%s); its process group was stopped", task.id, exc)
            return None
        finally:
            with self.lock:
                self.runs.pop(task.id, None)
        if result.status == TaskStatus.PENDING:
            log.info("task %s: released on shutdown", task.id)
        if result.status == TaskStatus.FAILED:
            with self.lock:
                self.failed += 1
        return result

    def slot(self, number: int) -> None:
        """Claim and run tasks one after another until the runner stops; no error ends it.

        A result is delivered with the claim of the slot's next task in the same call; only when that brings
        nothing does the slot long-poll for work. After a failure the slot waits before it claims again, twice as
        long each time up to COHERENCE_RUNNER_BACKOFF_MAX_SECONDS: when the API refuses claims, and when this host
        cannot run a task (its log cannot be written: a full disk), which hands the task back without using an
        attempt, so a full disk neither fails the queue nor churns it."""
        limit = self.settings.coherence_runner_backoff_max_seconds
        api_backoff, fault_backoff = Backoff(limit), Backoff(limit)
        claim: Claim | None = None
        while not self.stopping.is_set():
            if claim is None:
                self._hold(number, False)
                asked = time.monotonic()
                try:
                    claim = self._claim(number)
                except ApiError as exc:
                    log.warning("slot %d: claim failed (%s); retrying in %.1fs", number, exc, api_backoff.seconds)
                    self._pause(number, api_backoff)
                    continue
                except Exception as exc:  # not the API's answer: this host's fault
                    self._fault(number, exc, fault_backoff)
                    continue
                api_backoff.reset()
                if claim is None:
                    if self.once:
                        break
                    # normally the long poll already waited; this covers an API that answered early (restarting)
                    self.stopping.wait(max(0.0, min(self.interval, RETRY_SECONDS) - (time.monotonic() - asked)))
                    continue
                self._hold(number, True)
            if self.stopping.is_set():  # claimed while a stop began: hand it straight back
                break
            current, claim = claim, None
            try:
                claim = self._work(current, number)
            except RunnerFault as exc:
                self._fault(number, exc, fault_backoff, current)
            except Exception as exc:  # after the result was kept: it is delivered from there, not handed back
                self._fault(number, exc, fault_backoff)
            else:
                fault_backoff.reset()
        if claim is not None:
            self._release(claim)
        self._hold(number, False)
        with self.lock:
            self.slots_done.add(number)

    def _work(self, claim: Claim, number: int) -> Claim | None:
        """Start the claim if it may start, run it and deliver its result; the slot's next claim when the delivery
        brought one."""
        if not self._startable(claim):
            return None
        try:
            result = self._run_one(claim, number)
        except RunnerFault:
            raise
        except Exception as exc:  # no result kept yet: the task goes back to pending, as for a fault of this host
            log.exception("slot %d: task %s could not be run", number, claim.task.id)
            raise RunnerFault(f"{type(exc).__name__}: {exc}") from exc
        if result is None:
            return None
        more = not self.stopping.is_set() and result.status != TaskStatus.PENDING
        return self.keep(result, claim_next=more)

    def _fault(self, number: int, exc: Exception, backoff: Backoff, claim: Claim | None = None) -> None:
        """Slot ``number`` failed on this host: its task, if given, goes back to pending (no attempt used), the
        runner heartbeat reports the slot blocked, and the slot waits before it claims again."""
        if claim is not None:
            message = f"slot {number}: task {claim.task.id} not started: {exc}"
            log.error("%s; handed back, claiming again in %.1fs", message, backoff.seconds)
        else:
            message = f"slot {number}: {type(exc).__name__}: {exc}"
            log.exception("%s; claiming again in %.1fs", message, backoff.seconds)
        with self.lock:
            self.blocked[number] = message
        self._note(message)
        if claim is not None:
            try:
                self._release(claim, f"not started on runner {self.runner_id}: {exc}\n")
            except Exception:  # the lease returns it, at the cost of an attempt
                log.exception("slot %d: task %s could not be handed back", number, claim.task.id)
        self._hold(number, False)
        self._pause(number, backoff)

    def _note(self, message: str) -> None:
        """Remember the last error for the runner heartbeat (``coherence status``, the runner_blocked rule)."""
        with self.lock:
            self.last_error = f"{_utc()} {message}"

    def _hold(self, number: int, holding: bool) -> None:
        """Mark slot ``number`` as holding a task or not; a stop waits only for the slots that hold one."""
        with self.settled:
            if holding:
                self.working.add(number)
            else:
                self.working.discard(number)
                self.settled.notify_all()

    def _settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no slot holds a task; True when none does."""
        with self.settled:
            return self.settled.wait_for(lambda: not self.working, max(0.0, timeout))

    def release_handoff(self) -> None:
        """Hand back tasks claimed for slots that stopped before taking them."""
        while True:
            with self.lock:
                if not self.handoff:
                    return
                claim = self.handoff.popleft()
            self._release(claim)

    # --- the whole runner ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the runner heartbeat reports: its slots, how many run a task, are alive, are blocked by a fault of
        this host (a full disk), and the last such error."""
        with self.lock:
            return {"workers": self.workers, "busy": len(self.runs), "types": self.types,
                    "slots_alive": sum(1 for t in self.slots if t.is_alive()), "slots_blocked": len(self.blocked),
                    "blocked": [self.blocked[n] for n in sorted(self.blocked)], "last_error": self.last_error,
                    "heartbeat_seconds": self.settings.coherence_runner_heartbeat_seconds}

    def heartbeat_loop(self) -> None:
        """Keep this runner visible in the registry (the monitor alerts on silence) and drain the outbox.

        At its normal interval while all is delivered; about once a second while results wait or the API does not
        answer, so the outbox is delivered as soon as the API is back."""
        failing, waiting = False, 0
        while not self.kill_now.is_set():
            self.attention.clear()
            answered = False
            try:
                self.client.runner_heartbeat(self.runner_id, socket.gethostname(), os.getpid(), __version__,
                                             self.status())
                if failing:
                    log.info("the API answers again")
                failing, answered = False, True
                still = self.flush_outbox()
                if still and still != waiting:
                    log.info("%d results wait in the outbox for the API", still)
                waiting = still
                self._prune_files()
            except ApiError as exc:
                if not failing:  # once per outage, not once a second
                    log.warning("runner heartbeat failed: %s; retrying every %gs", exc, RETRY_SECONDS)
                failing = True
            except Exception:  # the heartbeat also flushes the outbox: it must outlive any one failure
                log.exception("runner heartbeat pass failed")
            normal = self.settings.coherence_runner_heartbeat_seconds
            self.attention.wait(normal if answered and not waiting else min(normal, RETRY_SECONDS))

    def _prune_files(self) -> None:
        """Retention of this host's task logs and prompt files, once per COHERENCE_PRUNE_INTERVAL_SECONDS; it runs
        in the heartbeat loop because it asks the API which tasks are finished, as the heartbeat does anyway."""
        now = time.monotonic()
        if self.pruned_at is not None and now - self.pruned_at < self.settings.coherence_prune_interval_seconds:
            return
        self.pruned_at = now
        prune_task_files(self.settings, self.client)

    def request_stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        if not self.stopping.is_set():
            log.info("signal %s: no new claims; running tasks get %.0fs to finish", signum, self.grace)
            self.stop_reason = signal.Signals(signum).name
        self.stopping.set()

    def say_stopped(self, reason: str) -> None:
        """The last heartbeat: the registry row is marked stopped (info.stopped says why), so every view stops
        counting this runner at once and shows it as stopped, not dead. Best effort: when the API does not answer,
        the row turns dead once its heartbeat interval has passed."""
        try:
            self.client.runner_heartbeat(self.runner_id, socket.gethostname(), os.getpid(), __version__,
                                         {**self.status(), "stopped": reason})
        except ApiError as exc:
            log.warning("could not tell the API this runner stopped: %s", exc)

    def _dead_slots(self) -> list[int]:
        with self.lock:
            return [n for n, t in enumerate(self.slots) if not t.is_alive() and n not in self.slots_done]

    def run(self) -> int:
        """Run until stopped (exit 0) or, with ``once``, until the queue is empty (1 when any task failed); exit
        SLOT_DIED when a slot thread died, so the supervisor starts a whole runner again rather than one that
        heartbeats with fewer slots than it says."""
        self.outbox.mkdir(parents=True, exist_ok=True)
        for path in remove_dead_writers_temps(self.outbox):
            log.warning("removed %s, left by a runner that died while writing it", path.name)
        for line in kill_orphaned_task_groups(self.settings):
            log.warning("left behind by a runner that is gone: %s", line)
        log.info("runner %s: %d workers, types %s, workspace %s", self.runner_id, self.workers,
                 self.types or "all", self.settings.coherence_workspace.resolve())
        with self.lock:
            self.slots = [threading.Thread(target=self.slot, args=(i,), daemon=True) for i in range(self.workers)]
        for thread in self.slots:
            thread.start()
        beats = threading.Thread(target=self.heartbeat_loop, daemon=True)
        beats.start()  # after the slots: its first report counts them alive
        dead: list[int] = []
        while any(t.is_alive() for t in self.slots) and not self.stopping.is_set():
            dead = self._dead_slots()
            if dead:
                log.critical("slot(s) %s died; stopping the runner (exit %d) so it is started again", dead, SLOT_DIED)
                self.stop_reason = f"slot(s) {dead} died (exit {SLOT_DIED})"
                self.stopping.set()
                break
            self.stopping.wait(0.5)
        dead = dead or self._dead_slots()
        # Slots waiting on a claim are not waited for: the process ends and the API, seeing the client gone,
        # claims nothing for it. Slots holding a task get the grace, then their tasks are stopped and released.
        if not self._settle(self.grace):
            with self.lock:
                running = sorted(self.runs)
            log.warning("grace period over: stopping and releasing tasks %s", running)
            self.kill_now.set()
            self._settle(self.settings.agent_kill_grace_seconds + 30)
        self.release_handoff()
        self.kill_now.set()
        self.attention.set()  # the heartbeat loop ends now, not an interval later
        if self.flush_outbox():
            log.warning("API unreachable: results wait in %s and are delivered by the next runner", self.outbox)
        self._save_unsaved()
        beats.join(self.settings.coherence_http_timeout)  # no heartbeat of its may land after the one saying stopped
        self.say_stopped(self.stop_reason or (f"slot(s) {dead} died (exit {SLOT_DIED})" if dead else
                                              "--once: no work left" if self.once else "ended"))
        self.client.close()
        log.info("runner %s stopped", self.runner_id)
        if dead:
            return SLOT_DIED
        return 1 if self.once and self.failed else 0

    def _save_unsaved(self) -> None:
        """On the way out: results that are only in memory get one more try at the outbox (the disk may have space
        again); what still cannot be written is named in the log, the only trace left of it."""
        with self.lock:
            results = list(self.unsaved.values())
        for result in results:
            try:
                write_json_atomic(self._outbox_path(result), asdict(result))
            except OSError as exc:
                log.error("task %s: result lost (run %s, %s, exit %s): neither the API nor the outbox took it (%s)",
                          result.task_id, result.claim_token, result.status, result.exit_code, exc)
