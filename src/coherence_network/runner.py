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

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from coherence_network import __version__
from coherence_network.client import ApiClient, ApiConflict, ApiError, ApiNotFound, ApiUnavailable
from coherence_network.contract import Task, TaskStatus
from coherence_network.cleanup import prune_task_files
from coherence_network.logfiles import RUN_FILES, remove_dead_writers_temps, task_log_path, write_json_atomic
from coherence_network.settings import Settings
from coherence_network.task_env import build_argv, task_environment
from coherence_network.taskgroups import TaskGroup, kill_orphaned_task_groups, stop_previous_runs

log = logging.getLogger("coherence.runner")

DECISION_MARKER = "NEEDS_DECISION:"
MAX_CLAIM_WAIT = 60.0  # the API's limit on one long-poll claim
DEFAULT_CLAIM_WAIT = 30.0  # an idle slot's long poll: the API answers at once when work comes, so long costs nothing
STEP_CHARS = 200
COMMAND_CHARS = 500
WATCH_SECONDS = 0.2
RETRY_SECONDS = 1.0  # pace of heartbeats and deliveries while the API does not answer


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


class ClaimLost(Exception):
    """The API no longer holds our claim (lease expired and the task went to another runner)."""


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def lease_of(task: Task, default: float) -> float:
    """The lease the API granted with this claim (the API's setting, not ours), so heartbeats keep pace with it."""
    if task.lease_expires_at is None or task.started_at is None:
        return default
    granted = (task.lease_expires_at - task.started_at).total_seconds()
    return granted if granted > 0 else default


class TaskRun:
    """One run of one task: process group, log file, output tail, decision question."""

    def __init__(self, task: Task, settings: Settings, runner_id: str) -> None:
        self.task = task
        self.settings = settings
        self.runner_id = runner_id
        self.tail: deque[str] = deque()
        self.tail_bytes = 0
        self.last_line = ""
        self.question: str | None = None
        self.group: TaskGroup | None = None
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

    def _output(self, logfile: IO[str], line: str) -> None:
        """One line of the task's output (or the runner's note about it), masked: to the log file and the tail."""
        line = self.environment.mask(line)
        with self.output_lock:
            logfile.write(line)
            logfile.flush()
            self._keep(line)

    def _pump(self, stream: IO[bytes], logfile: IO[str]) -> None:
        for raw in iter(stream.readline, b""):
            self._output(logfile, raw.decode("utf-8", errors="replace"))

    def execute(self, beat: Callable[[str], bool], stop_now: threading.Event) -> TaskResult:
        """Run the task to its end; ``beat()`` is called every heartbeat interval and may raise ClaimLost.

        A beat that returns False (the API did not answer) is tried again after RETRY_SECONDS, not a whole
        interval later, so a lease is renewed as soon as the API is back."""
        task = self.task
        path = task_log_path(self.settings, task.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(path, "a", encoding="utf-8") as logfile:
            logfile.write(
                f"=== task {task.id} type={task.task_type} run={task.claim_token} runner={self.runner_id}\n"
                f"=== start: {_utc()}\n"
            )
            logfile.flush()
            for line in stop_previous_runs(self.settings, task.id):  # never two runs of one task at once
                log.warning("task %s: stopped the previous run first: %s", task.id, line)
                logfile.write(f"=== stopped the previous run first: {line}\n")
            try:
                argv = build_argv(task, self.settings, RUN_FILES["prompts/"].path(self.settings))
                logfile.write(f"=== command: {self.environment.mask(shlex.join(argv))[:COMMAND_CHARS]}\n")
                logfile.flush()
                env = {**self.environment.env, "COHERENCE_TASK_ID": str(task.id), "COHERENCE_TASK_TYPE": task.task_type}
                env.pop("COHERENCE_DECISION", None)  # only this task's own decision, never one the runner inherited
                if task.decision:
                    env["COHERENCE_DECISION"] = task.decision
                self.group = TaskGroup(argv, self.settings, task, self.runner_id,
                                       cwd=self.settings.coherence_workspace, env=env)
            except (OSError, ValueError) as exc:
                self._output(logfile, f"cannot start the task: {exc}\n")
                return self._finish(logfile, started, None)
            group, proc = self.group, self.group.proc
            pump = threading.Thread(target=self._pump, args=(proc.stdout, logfile), daemon=True)
            pump.start()
            interval = max(0.2, lease_of(task, self.settings.coherence_lease_seconds) / 3)
            next_beat = started + interval
            try:
                while proc.poll() is None:
                    if time.monotonic() - started > self.timeout:
                        self.timed_out = True
                        self._output(logfile, f"timed out after {self.timeout:g}s; stopping the process group\n")
                        group.stop(self.settings.agent_kill_grace_seconds)
                        break
                    if stop_now.is_set():
                        self.stopped = True
                        self._output(logfile, "runner is stopping: process group stopped, task back to pending\n")
                        group.stop(self.settings.agent_kill_grace_seconds)
                        break
                    try:
                        proc.wait(WATCH_SECONDS)  # short, so a timeout or a stop is acted on promptly
                    except subprocess.TimeoutExpired:
                        if time.monotonic() >= next_beat:
                            renewed = beat(self.last_line)
                            next_beat = time.monotonic() + (interval if renewed else min(interval, RETRY_SECONDS))
            except ClaimLost as exc:
                self._output(logfile, f"=== claim lost ({exc}): process group stopped, result dropped\n")
                group.stop(self.settings.agent_kill_grace_seconds)
                raise
            finally:
                proc.wait()
                group.close()  # whatever the task left running in its group goes with it
                pump.join(10)
            return self._finish(logfile, started, proc.returncode)

    def _finish(self, logfile: IO[str], started: float, returncode: int | None) -> TaskResult:
        if self.stopped:
            status = TaskStatus.PENDING
        elif self.timed_out:
            status = TaskStatus.FAILED
        elif self.question is not None:  # the agent asked: its exit code only says it stopped to wait
            status = TaskStatus.NEEDS_DECISION
        else:
            status = TaskStatus.COMPLETED if returncode == 0 else TaskStatus.FAILED
        duration = time.monotonic() - started
        logfile.write(f"=== end: {_utc()} exit_code={returncode} duration={duration:.3f}s status={status}\n")
        return TaskResult(
            task_id=self.task.id,
            claim_token=self.task.claim_token,
            status=status,
            exit_code=returncode,
            output="".join(self.tail),
            decision_prompt=self.question if status is TaskStatus.NEEDS_DECISION else None,
        )


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
        self.runs: dict[int, TaskRun] = {}
        self.failed = 0
        self.lock = threading.Lock()
        self.delivering = threading.Lock()  # one delivery at a time, so a slot and the outbox flush never race
        self.attention = threading.Event()  # a result waits in the outbox: the heartbeat loop goes at once
        self.claiming = threading.Lock()  # one claim in flight per runner, for every idle slot
        self.handoff: deque[Task] = deque()  # claimed for an idle slot that has not taken it yet
        self.working: set[int] = set()  # slots holding a task (running or delivering it); a stop waits for these
        self.settled = threading.Condition(self.lock)  # notified when a slot lets go of its task
        self.client = ApiClient(settings=settings, retries=2)
        self.pruned_at: float | None = None  # monotonic time of the last retention pass over task files

    # --- results ----------------------------------------------------------------------------------------
    def _outbox_path(self, result: TaskResult) -> Path:
        return self.outbox / f"task_{result.task_id}_{result.claim_token}.json"

    def deliver(self, result: TaskResult) -> bool:
        """Send a result; True when the API has it (or rejected it for good), False to try again later."""
        return self._deliver(result, claim_next=False)[0]

    def _deliver(self, result: TaskResult, *, claim_next: bool) -> tuple[bool, Task | None]:
        """``deliver``; with ``claim_next`` the same call claims this runner's next task: (delivered, next task)."""
        with self.delivering:
            if not self._outbox_path(result).exists():
                return True, None  # delivered meanwhile by another thread
            return self._send(result, claim_next)

    def _send(self, result: TaskResult, claim_next: bool) -> tuple[bool, Task | None]:
        following = None
        fields: dict[str, Any] = {"output": result.output, "exit_code": result.exit_code,
                                  "decision_prompt": result.decision_prompt}
        try:
            if claim_next:
                _, following = self.client.finish_and_claim(result.task_id, result.claim_token, result.status,
                                                            runner_id=self.runner_id, types=self.types, **fields)
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
        self._outbox_path(result).unlink(missing_ok=True)
        return True, following

    def flush_outbox(self) -> int:
        """Deliver every stored result; returns how many are still waiting."""
        waiting = 0
        for path in sorted(self.outbox.glob("task_*.json")):
            try:
                result = TaskResult(**json.loads(path.read_text()))
            except FileNotFoundError:
                continue  # delivered by its slot since the folder was listed
            except (ValueError, TypeError) as exc:
                log.error("outbox file %s is unreadable (%s); moved aside", path.name, exc)
                path.rename(path.with_suffix(".bad"))
                continue
            if not self.deliver(result):
                waiting += 1
        return waiting

    def keep(self, result: TaskResult, *, claim_next: bool = False) -> Task | None:
        """Persist a result before sending it, so neither an API outage nor a runner restart can lose it; with
        ``claim_next`` the delivery also claims this slot's next task (one call), returned when one came."""
        write_json_atomic(self._outbox_path(result), asdict(result))
        delivered, following = self._deliver(result, claim_next=claim_next)
        if not delivered:
            self.attention.set()
        return following

    # --- one slot -----------------------------------------------------------------------------------------
    def _claim(self) -> Task | None:
        """A task for an idle slot: one another slot's claim brought, else a claim for every idle slot at once.

        One claim is in flight per runner; the API holds it up to ``interval`` seconds and answers as soon as work
        exists, so an idle slot is always waiting on the API (dispatch is immediate) at next to no cost. A stop does
        not wait for it (see ``run``). Tasks claimed for other idle slots wait in ``handoff`` for them."""
        with self.claiming:
            with self.lock:
                if self.handoff:
                    return self.handoff.popleft()
                idle = self.workers - len(self.runs)
            if self.stopping.is_set():
                return None
            wait = 0.0 if self.once else min(self.interval, MAX_CLAIM_WAIT)
            if idle <= 1:
                return self.client.claim(self.runner_id, types=self.types, wait_seconds=wait)
            claimed = self.client.claim_many(self.runner_id, idle, types=self.types, wait_seconds=wait)
            with self.lock:
                self.handoff.extend(claimed[1:])
            return claimed[0] if claimed else None

    def _run_one(self, task: Task) -> TaskResult | None:
        """Run a claimed task; its result (None when the claim was lost and the result dropped)."""
        run = TaskRun(task, self.settings, self.runner_id)
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

        try:
            result = run.execute(beat, self.kill_now)
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
        """Claim and run tasks one after another until the runner stops; never dies of an error.

        A result is delivered with the claim of the slot's next task in the same call; only when that brings
        nothing does the slot long-poll for work."""
        backoff = RETRY_SECONDS
        task: Task | None = None
        while not self.stopping.is_set():
            if task is None:
                self._hold(number, False)
                asked = time.monotonic()
                try:
                    task = self._claim()
                except ApiError as exc:
                    log.warning("slot %d: claim failed (%s); retrying in %.1fs", number, exc, backoff)
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = RETRY_SECONDS
                if task is None:
                    if self.once:
                        return
                    # normally the long poll already waited; this covers an API that answered early (restarting)
                    self.stopping.wait(max(0.0, min(self.interval, RETRY_SECONDS) - (time.monotonic() - asked)))
                    continue
                self._hold(number, True)
            if self.stopping.is_set():  # claimed while a stop began: hand it straight back
                break
            try:
                result = self._run_one(task)
            except Exception:  # e.g. the log folder is unwritable: the lease returns the task, the slot lives on
                log.exception("slot %d: task %s could not be run", number, task.id)
                result = None
            task = None
            if result is not None:
                more = not self.stopping.is_set() and result.status != TaskStatus.PENDING
                task = self.keep(result, claim_next=more)
        if task is not None:
            self.keep(TaskResult(task.id, task.claim_token, TaskStatus.PENDING, None, ""))
        self._hold(number, False)

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
                task = self.handoff.popleft()
            self.keep(TaskResult(task.id, task.claim_token, TaskStatus.PENDING, None, ""))

    # --- the whole runner ---------------------------------------------------------------------------------
    def heartbeat_loop(self) -> None:
        """Keep this runner visible in the registry (the monitor alerts on silence) and drain the outbox.

        At its normal interval while all is delivered; about once a second while results wait or the API does not
        answer, so the outbox is delivered as soon as the API is back."""
        failing, waiting = False, 0
        while not self.kill_now.is_set():
            self.attention.clear()
            answered = False
            try:
                with self.lock:
                    busy = len(self.runs)
                self.client.runner_heartbeat(
                    self.runner_id, socket.gethostname(), os.getpid(), __version__,
                    {"workers": self.workers, "busy": busy, "types": self.types},
                )
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
        self.stopping.set()

    def run(self) -> int:
        """Run until stopped (exit 0) or, with ``once``, until the queue is empty (1 when any task failed)."""
        self.outbox.mkdir(parents=True, exist_ok=True)
        for path in remove_dead_writers_temps(self.outbox):
            log.warning("removed %s, left by a runner that died while writing it", path.name)
        for line in kill_orphaned_task_groups(self.settings):
            log.warning("left behind by a runner that is gone: %s", line)
        log.info("runner %s: %d workers, types %s, workspace %s", self.runner_id, self.workers,
                 self.types or "all", self.settings.coherence_workspace.resolve())
        beats = threading.Thread(target=self.heartbeat_loop, daemon=True)
        beats.start()
        slots = [threading.Thread(target=self.slot, args=(i,), daemon=True) for i in range(self.workers)]
        for thread in slots:
            thread.start()
        while any(t.is_alive() for t in slots) and not self.stopping.is_set():
            self.stopping.wait(0.5)
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
        self.client.close()
        log.info("runner %s stopped", self.runner_id)
        return 1 if self.once and self.failed else 0
