"""One run of one claimed task on this host: its log file, its process group (``taskgroups``) with a timeout, the
output tail and the decision question it asks, and the result it ends with.

What the task is started with (its arguments, its environment without secrets) is decided in ``task_env``; the
runner (``runner``) claims the tasks, heartbeats their leases and delivers the results (``result_outbox``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from coherence_network.agents import messages
from coherence_network.clock import utcnow
from coherence_network.contract import Task, TaskStatus
from coherence_network.errors import CoherenceError
from coherence_network.gitops import GitError
from coherence_network.item_merge import answer
from coherence_network.item_worktree import ItemWork
from coherence_network.logfiles import RUN_FILES, task_log_path
from coherence_network.phase_evidence import Ending
from coherence_network.run_outcome import RunEnd, failure_of
from coherence_network.settings import Settings
from coherence_network.task_env import build_argv, task_environment
from coherence_network.taskgroups import NewerRunRecorded, TaskGroup, TaskStartError, stop_previous_runs
from coherence_network.usage_meter import UsageMeter

log = logging.getLogger("coherence.runner")

DECISION_MARKER = "NEEDS_DECISION:"
STEP_CHARS = 200
COMMAND_CHARS = 500
WATCH_SECONDS = 0.2
RETRY_SECONDS = 1.0  # pace of heartbeats and deliveries while the API does not answer
CLAIM_MARGIN = 0.25  # a claim starts only within the first 3/4 of its lease, counted from no later than its grant


def asked(line: str) -> str | None:
    """The question a line of output asks (``NEEDS_DECISION: <question>``), also where a CLI that reports in JSON
    carries it inside what the agent said (behind an escaped newline, never at the start of an output line)."""
    texts = [line, *messages(line)] if line.lstrip().startswith("{") else [line]
    for text in texts:
        for part in text.splitlines():
            if part.lstrip().startswith(DECISION_MARKER):
                return part.lstrip()[len(DECISION_MARKER):].strip() or "(no question given)"
    return None


@dataclass
class TaskResult:
    """What a run produced; persisted in the outbox until the API has it."""

    task_id: int
    claim_token: int
    status: TaskStatus
    exit_code: int | None
    output: str
    decision_prompt: str | None = None
    error_category: str | None = None  # why a failed or cancelled run ended so (run_outcome)
    error_summary: str | None = None
    evidence: dict[str, Any] | None = None  # what an item's phase left (item_worktree)
    agent: str | None = None  # the agent preset that ran it, and what it reported using (usage_meter)
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None

    def __post_init__(self) -> None:
        self.status = TaskStatus(self.status)  # read back from an outbox file as a string; a bad one is refused


class ClaimLost(CoherenceError):
    """The API no longer holds our claim (lease expired and the task went to another runner)."""


class CancelRequested(CoherenceError):
    """An operator cancelled the running task (its lease renewal said so): its group is stopped, the run finishes
    as cancelled with its output so far."""


def utc_stamp() -> str:
    """Now, to the second, for the lines a runner writes (task log header and footer, its last error)."""
    return utcnow().isoformat(timespec="seconds")


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
    """A claimed task and ``granted``, a moment on this host's monotonic clock (never compared with another host's
    clock) no later than the API's grant: when the claim was sent, plus how long the API said it held it. Not when
    the answer arrived: an API stalled between the grant and its answer (SIGSTOP, a slow network) would make a lease
    already spent look fresh. The lease the API granted runs out no sooner than a lease after ``granted``."""

    task: Task
    granted: float

    def usable_until(self, default_lease: float) -> float:
        """The last moment this claim may start: its lease less a quarter (CLAIM_MARGIN), for the time its guard
        takes to start. Later, the lease may have run out and the task may be running elsewhere."""
        return self.granted + lease_of(self.task, default_lease) * (1 - CLAIM_MARGIN)


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
        self.claimed_at = claim.granted
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
        self.cancelled: str | None = None  # an operator's cancel request stopped it (its words)
        self.not_started: str | None = None  # why it could not start (a configuration error)
        self.task_line = ""  # the task's own last non-empty line (the runner's notes are not the task's)
        self.printed_at: float | None = None  # monotonic: the task's last line of output (its start until it prints)
        self.stalled: float | None = None  # stopped after this many silent seconds (COHERENCE_STALL_STOP_SECONDS)
        self.output_lock = threading.Lock()  # the pump thread and the watching thread both write the log
        self.environment = task_environment(settings, os.environ)
        self.work: ItemWork | None = None  # the item's worktree a phase task runs in (None: the workspace)
        self.agent: str | None = None  # the preset of an agent task (one with no command); None for a command
        self.model: str | None = None
        if not self.task.command:
            self.agent, self.model = settings.agent_for(self.task.task_type)
        self.meter = UsageMeter(self.agent, settings.coherence_cost_cap_task_usd)
        self.over_budget: str | None = None  # its reported cost passed the task cap: stopped

    @property
    def timeout(self) -> float:
        return float(self.task.timeout_seconds or self.settings.agent_task_timeout)

    def _keep(self, line: str, *, own: bool = True) -> None:
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
            if own:
                self.task_line = self.last_line
        question = asked(line)
        if question is not None:
            self.question = question

    def _output(self, line: str, *, own: bool = False) -> None:
        """One line of the task's output (``own``) or the runner's note about it, masked: to the log file and the
        tail."""
        line = self.environment.mask(line)
        with self.output_lock:
            if self.logfile is not None:
                self.logfile.write(line)
            self._keep(line, own=own)

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.printed_at = time.monotonic()
            line = raw.decode("utf-8", errors="replace")
            self.meter.feed(line)
            self._output(line, own=True)

    def silent_seconds(self) -> float | None:
        """How long the task has printed nothing (counted from its start until its first line); None before it
        starts. Sent with every lease renewal: the API's views and the stalled_task rule read it."""
        return None if self.printed_at is None else round(max(time.monotonic() - self.printed_at, 0.0), 3)

    def execute(self, beat: Callable[[str], Task | None], stop_now: threading.Event,
                logged: Callable[[], None] = lambda: None) -> TaskResult:
        """Run the task to its end; ``beat()`` is called every heartbeat interval and may raise ClaimLost, and
        ``logged()`` once the log's header is written (this host takes writes). A beat's answer that carries a cancel
        request stops the process group and ends the run as cancelled.

        RunnerFault when this host cannot start it; ClaimLost (nothing started) when a newer run of the task is
        recorded on this host. A beat that returns False (the API did not answer) is tried again after
        RETRY_SECONDS, not a whole interval later, so a lease is renewed as soon as the API is back."""
        self.logfile = TaskLog(task_log_path(self.settings, self.task.id), self.task.id)

        def renew(step: str) -> bool:
            """``beat``: True when the API renewed the lease; CancelRequested when its answer says so."""
            renewed = beat(step)
            if renewed is not None and renewed.cancel_requested_at is not None:
                raise CancelRequested(f"cancelled by {renewed.cancelled_by}: {renewed.cancel_reason}")
            return renewed is not None

        try:
            return self._execute(self.logfile, renew, stop_now, logged)
        finally:
            self.logfile.close()

    def _execute(self, logfile: TaskLog, beat: Callable[[str], bool], stop_now: threading.Event,
                 logged: Callable[[], None]) -> TaskResult:
        task = self.task
        started = time.monotonic()
        logfile.write(f"=== task {task.id} type={task.task_type} run={task.claim_token} runner={self.runner_id}\n"
                      f"=== start: {utc_stamp()}\n", strict=True)
        logged()
        try:  # never two runs of one task at once, and never an older claim's run after a newer one
            previous = stop_previous_runs(self.settings, task.id, task.claim_token)
        except NewerRunRecorded as exc:
            logfile.write(f"=== not started: {exc}\n")
            raise ClaimLost(str(exc)) from exc
        for line in previous:
            log.warning("task %s: stopped the previous run first: %s", task.id, line)
            logfile.write(f"=== stopped the previous run first: {line}\n")
        try:  # a backlog item's phase runs in its item's worktree; an answer about its merge needs no agent
            self.work = ItemWork.of(task, self.settings)
            cwd = self.work.prepare() if self.work else self.settings.coherence_workspace
            answered = answer(self.work) if self.work else None
        except (ValueError, GitError) as exc:
            return self._not_started(exc, started)
        if answered is not None:
            return self._finish(started, None, answered)
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
        lease = lease_of(task, self.settings.coherence_lease_seconds)
        interval = max(0.2, lease / 3)
        confirmed = self.claimed_at  # when the API last confirmed our lease: the lease runs from the claim

        def lease_fresh() -> None:
            """Called at the last moment before the guard starts the task (its own start-up, a process, may be
            slow on a loaded host): a lease older than a beat interval is renewed first, so no task starts on a
            lease nearly spent. ClaimLost (nothing started) when the claim went meanwhile, or when the API did
            not answer and the lease may be out by now (it may run elsewhere; the API hands it out again)."""
            nonlocal confirmed
            if time.monotonic() - confirmed < interval:
                return
            asked = time.monotonic()
            if beat(self.last_line):
                confirmed = asked
            elif time.monotonic() - confirmed > lease * (1 - CLAIM_MARGIN):
                raise ClaimLost("the lease could not be renewed before the start (the API did not answer) and "
                                "may have run out")

        try:
            self.group = TaskGroup(argv, self.settings, task, self.runner_id,
                                   cwd=cwd, env=env, before_start=lease_fresh)
        except TaskStartError as exc:  # the guard ran but the task's program could not start: the task's fault
            return self._not_started(exc, started)
        except CancelRequested as exc:  # the lease renewal before the start said so: nothing was started
            self.cancelled = str(exc)
            self._output(f"=== {exc}: not started\n")
            return self._finish(started, None)
        except OSError as exc:
            raise RunnerFault(f"cannot start the task's guard: {exc}") from exc
        group, proc = self.group, self.group.proc
        self.printed_at = time.monotonic()
        next_beat = confirmed + interval
        stall_limit = self.settings.coherence_stall_stop_seconds
        pump = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        pump.start()
        try:
            while proc.poll() is None:
                if time.monotonic() - started > self.timeout:
                    self.timed_out = True
                    self._output(f"timed out after {self.timeout:g}s; stopping the process group\n")
                    group.stop(self.settings.agent_kill_grace_seconds)
                    break
                silent = self.silent_seconds() or 0.0
                if stall_limit and silent > stall_limit:
                    self.stalled = silent
                    log.warning("task %s: silent for %.0fs (COHERENCE_STALL_STOP_SECONDS=%g): stopped as stalled",
                                self.task.id, silent, stall_limit)
                    self._output(f"silent for {silent:.0f}s (COHERENCE_STALL_STOP_SECONDS={stall_limit:g}); "
                                 "stopping the process group\n")
                    group.stop(self.settings.agent_kill_grace_seconds)
                    break
                self.over_budget = self.meter.over_cap()
                if self.over_budget is not None:
                    self._output(f"{self.over_budget}; stopping the process group\n")
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
        except CancelRequested as exc:
            self.cancelled = str(exc)
            self._output(f"=== {exc}: stopping the process group\n")
            group.stop(self.settings.agent_kill_grace_seconds)
        finally:
            proc.wait()
            group.close()  # whatever the task left running in its group goes with it
            pump.join(10)
        if self.work is not None and proc.returncode == 0 and not (self.timed_out or self.stopped or self.cancelled):
            with contextlib.suppress(CancelRequested):  # too late to cancel: the agent's work is done
                beat(self.last_line)  # a fresh lease for the commit, merge and push its evidence takes
        return self._finish(started, proc.returncode)

    def _not_started(self, exc: Exception, started: float) -> TaskResult:
        self.not_started = str(exc)
        self._output(f"cannot start the task: {exc}\n")
        return self._finish(started, None)

    def _finish(self, started: float, returncode: int | None, ending: Ending | None = None) -> TaskResult:
        if self.stopped:
            status = TaskStatus.PENDING
        elif self.cancelled is not None:
            status = TaskStatus.CANCELLED
        elif self.timed_out or self.stalled is not None or self.over_budget is not None:
            status = TaskStatus.FAILED
        elif self.question is not None:  # the agent asked: its exit code only says it stopped to wait
            status = TaskStatus.NEEDS_DECISION
        else:
            status = TaskStatus.COMPLETED if returncode == 0 else TaskStatus.FAILED
        if ending is None and status is TaskStatus.COMPLETED and self.work is not None:
            ending = self.work.conclude("".join(self.tail))  # the phase's evidence decides, not its exit code
        for note in ending.notes if ending else ():
            self._output(note + "\n")
        status = ending.status if ending else status
        duration = time.monotonic() - started
        if self.logfile is not None:
            self.logfile.write(f"=== end: {utc_stamp()} exit_code={returncode} duration={duration:.3f}s "
                               f"status={status}\n")
        why = None
        if ending is not None and ending.category is not None:
            why = ending.category, ending.summary or ""
        elif status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            why = failure_of(RunEnd(returncode, self.task_line, self.timed_out, self.timeout, self.cancelled,
                                    self.not_started, agent=not self.task.command, stalled=self.stalled,
                                    over_budget=self.over_budget))
        used = self.meter.usage
        return TaskResult(
            task_id=self.task.id,
            claim_token=self.task.claim_token,
            status=status,
            exit_code=returncode,
            output="".join(self.tail),
            decision_prompt=(ending.question if ending and ending.question else self.question)
            if status is TaskStatus.NEEDS_DECISION else None,
            error_category=why[0].value if why else None,
            error_summary=why[1] if why else None,
            evidence=(ending.evidence if ending else self.work.evidence if self.work else None),
            agent=self.agent, model=self.model or None, tokens_in=used.input_tokens if used else None,
            tokens_out=used.output_tokens if used else None, cost_usd=used.cost_usd if used else None,
        )

