"""Agent runner: claims tasks from the API and runs each one as the agent protocol in DESIGN.md says.

Each worker slot is a thread that claims (long-polling, so dispatch is immediate), runs the task's command in its
own process group with a timeout, streams the output to ``var/logs/task_{id}.log``, heartbeats the lease, and
delivers the result. One run of a task is ``task_run``; the process group never outlives the runner (see
``taskgroups``). A result that cannot be delivered (API down) waits in ``var/run/runner_outbox/`` and is delivered
when the API is back, also by a restarted runner; nothing a task produced is lost (``result_outbox``). While the
API is down, heartbeats and deliveries are retried about once a second, so leases are renewed and results delivered
as soon as it answers again.

A task never sees the runner's secrets: what it is started with is decided in ``task_env``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import OrderedDict, deque
from typing import Any

from coherence_network import __version__
from coherence_network.client import ApiClient, ApiConflict, ApiError, ApiNotFound
from coherence_network.contract import Component, Task, TaskStatus
from coherence_network.endpoints import COMPONENT_ACTOR
from coherence_network.file_retention import prune_task_files
from coherence_network.outage import Outage
from coherence_network.result_outbox import ResultOutbox
from coherence_network.settings import Settings
from coherence_network.task_run import RETRY_SECONDS, Claim, ClaimLost, RunnerFault, TaskResult, TaskRun, utc_stamp
from coherence_network.taskgroups import kill_orphaned_task_groups
from coherence_network.usage_meter import task_cap

log = logging.getLogger("coherence.runner")

MAX_CLAIM_WAIT = 60.0  # the API's limit on one long-poll claim
DEFAULT_CLAIM_WAIT = 30.0  # an idle slot's long poll: the API answers at once when work comes, so long costs nothing
STARTED_MEMORY = 10_000  # tasks whose newest started claim token a runner remembers (never to start an older one)
SLOT_DIED = 3  # the runner's exit code when a slot thread died


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

    def __init__(self, settings: Settings, *, workers: int = 1, interval: float = DEFAULT_CLAIM_WAIT,
                 once: bool = False, types: list[str] | None = None, runner_id: str | None = None,
                 grace: float | None = None) -> None:
        self.settings = settings
        self.workers = workers
        self.interval = interval
        self.once = once
        self.types = types or None
        self.runner_id = runner_id or f"{socket.gethostname()}:{os.getpid()}"
        self.grace = settings.coherence_runner_stop_grace_seconds if grace is None else grace
        self.stopping = threading.Event()  # no new claims
        self.kill_now = threading.Event()  # running tasks are stopped and released
        self.runs: dict[int, TaskRun] = {}
        self.failed = 0
        self.lock = threading.Lock()
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
        self.client = ApiClient(settings=settings, retries=2, actor=f"{COMPONENT_ACTOR}{Component.RUNNER}")
        self.results = ResultOutbox(settings, self.client, self.runner_id, self.types, self._note)
        self.pruned_at: float | None = None  # monotonic time of the last retention pass over task files

    def keep(self, result: TaskResult, *, claim_next: bool = False) -> Claim | None:
        """Keep a result in the outbox and send it (result_outbox); one not delivered wakes the heartbeat loop, which
        retries about once a second. With ``claim_next``, the slot's next claim when the delivery brought one."""
        delivered, following = self.results.keep(result, claim_next=claim_next)
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
            sent = time.monotonic()
            answer = self.client.claim_held(self.runner_id, max(free, 1), types=self.types, wait_seconds=wait)
            claims = [Claim(task, sent + answer.held) for task in answer.tasks]
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
        run.meter.cap_usd = task_cap(self.client, run.agent, run.meter.cap_usd)
        with self.lock:
            self.runs[task.id] = run
        log.info("task %s: claimed (%s, run %s)", task.id, task.task_type, task.claim_token)
        api = Outage(log, first_delay=RETRY_SECONDS, max_delay=RETRY_SECONDS)

        def beat(step: str) -> Task | None:
            """Renew the lease: the task as the API has it (a cancel request shows on it); None when the API did not
            answer (the run goes on, the beat is retried soon)."""
            try:
                cost = run.meter.cost_usd  # what the run reported so far: the day cap counts it (store/costs.py)
                renewed = self.client.heartbeat(task.id, task.claim_token, current_step=step or None,
                                                silent_seconds=run.silent_seconds(),
                                                **({"cost_usd": cost} if cost is not None else {}))
            except (ApiConflict, ApiNotFound) as exc:
                raise ClaimLost(str(exc.detail)) from exc
            except ApiError as exc:
                api.failed("task %s: heartbeat failed (%s); still running, retrying every %gs", task.id, exc,
                           RETRY_SECONDS)
                return None
            api.recovered("task %s: heartbeat renewed the lease again", task.id)
            return renewed

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
            self.last_error = f"{utc_stamp()} {message}"

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
        api, waiting = Outage(log, first_delay=RETRY_SECONDS, max_delay=RETRY_SECONDS), 0
        while not self.kill_now.is_set():
            self.attention.clear()
            answered = False
            try:
                self.client.runner_heartbeat(self.runner_id, socket.gethostname(), os.getpid(), __version__,
                                             self.status())
                api.recovered("the API answers again")
                answered = True
                still = self.results.flush()
                if still and still != waiting:
                    log.info("%d results wait in the outbox for the API", still)
                waiting = still
                self._prune_files()
            except ApiError as exc:
                api.failed("runner heartbeat failed: %s; retrying every %gs", exc, RETRY_SECONDS)
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
        self.results.open()
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
        if self.results.flush():
            log.warning("API unreachable: results wait in %s and are delivered by the next runner",
                        self.results.folder)
        self.results.save_unsaved()
        beats.join(self.settings.coherence_http_timeout)  # no heartbeat of its may land after the one saying stopped
        self.say_stopped(self.stop_reason or (f"slot(s) {dead} died (exit {SLOT_DIED})" if dead else
                                              "--once: no work left" if self.once else "ended"))
        self.client.close()
        log.info("runner %s stopped", self.runner_id)
        if dead:
            return SLOT_DIED
        return 1 if self.once and self.failed else 0
