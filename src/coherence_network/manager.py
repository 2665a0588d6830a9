"""Project manager: turns a markdown backlog into phased tasks (spec -> test -> impl -> review) through the API.

It owns no task data: tasks live in the API's store. What it keeps is its own progress through the backlog, in
``var/logs/project_manager_state.json`` (written atomically after every change), so a restart resumes where it
stopped and never creates a finished phase again. Items are matched by their normalised text, so renumbering or
reordering the backlog keeps their progress. A blocked or skipped item is not given up: when its task moves again (an
operator retried it, or answered its question late) the item is taken up from that task's result. After each pass
it posts a summary as a component heartbeat, so ``/api/agent/pipeline-status`` can show the manager's state from any
API replica.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from coherence_network import __version__
from coherence_network.agents import messages
from coherence_network.backlog import PHASES, RUN_PHASE, BacklogItem, parse_backlog
from coherence_network.client import ApiClient, ApiConflict, ApiError, ApiNotFound
from coherence_network.clock import utcnow
from coherence_network.contract import ACTIVE_STATUSES, MAX_BATCH, Component, ItemStatus, Task, TaskStatus
from coherence_network.logfiles import write_json_atomic
from coherence_network.manager_state import ACTIVE, SETTLED, ItemState, ManagerState
from coherence_network.phase_evidence import verdict
from coherence_network.settings import Settings

log = logging.getLogger("coherence.manager")

# Settled on a task that can still move: an operator's retry of a failed or cancelled task, a late answer to a skipped
# question.
REOPENABLE = frozenset({ItemStatus.BLOCKED, ItemStatus.SKIPPED, ItemStatus.CANCELLED})
# Before settled_on was recorded (the first release's state files), the task status each reopenable item had settled on.
SETTLED_ON_STATUS: dict[str, TaskStatus] = {
    ItemStatus.BLOCKED: TaskStatus.FAILED, ItemStatus.SKIPPED: TaskStatus.NEEDS_DECISION,
    ItemStatus.CANCELLED: TaskStatus.CANCELLED,
}
TIMEOUT_DECIDER = "timeout:default"  # decided_by of a default answer the decision timeout recorded
COMPONENT = Component.MANAGER
RESULT_CHARS = 800  # output tail kept per phase and handed to the next phases' prompts
DIRECTION_LIMIT = 5000  # the API's limit on a task's direction
TITLE_CHARS = 200  # of the item's text, in each phase task's context (what views show for the item)
ITEM_CAP = "item cost cap reached"  # the reason an item blocked by COHERENCE_COST_CAP_ITEM_USD starts with

PHASE_GOALS = {
    "spec": "Write a short specification of this item: behaviour, interface and acceptance criteria.",
    "test": "Write the tests that the specification's acceptance criteria call for, before any implementation.",
    "impl": "Implement the item so that the tests pass; keep the change small and focused.",
    "review": "Review the implementation against the specification and the tests. Say what is wrong, if anything, "
    "and end with one line `VERDICT: pass` or `VERDICT: fail`.",
}

def shorten(text: str | None, limit: int = RESULT_CHARS) -> str:
    """The end of an output (where results and verdicts are), at most ``limit`` characters."""
    text = (text or "").strip()
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


# --- the manager -----------------------------------------------------------------------------------------------
@dataclass
class ManagerOptions:
    backlog: Path
    state_file: Path
    interval: float = 5.0
    hours: float = 0.0
    once: bool = False
    until_done: bool = False
    parallel: bool = False
    max_in_flight: int = 3
    max_iterations: int = 3


class ProjectManager:
    """One pass: read the backlog, advance every item in flight from its task's result, start new items."""

    def __init__(self, settings: Settings, client: ApiClient, options: ManagerOptions, *, fresh: bool = False) -> None:
        """``fresh`` (--reset) ignores the saved state; the first pass overwrites the file."""
        self.settings = settings
        self.client = client
        self.options = options
        self.state = ManagerState() if fresh else ManagerState.load(options.state_file)
        if fresh:
            log.warning("--reset: previous progress in %s is discarded", options.state_file)
        self.stop = threading.Event()
        self.last_items: list[BacklogItem] | None = None  # the last pass's items, for the heartbeat saying it stopped

    @property
    def capacity(self) -> int:
        return self.options.max_in_flight if self.options.parallel else 1

    def save(self) -> None:
        self.state.updated_at = utcnow().isoformat()
        write_json_atomic(self.options.state_file, self.state.to_json())

    # --- one pass ------------------------------------------------------------------------------------------
    def read_backlog(self) -> list[BacklogItem]:
        """Parse the backlog and match its items to their state by text; report new problems once."""
        backlog = parse_backlog(self.options.backlog)
        if backlog.problems != self.state.problems:
            for problem in backlog.problems:
                log.warning("%s %s; skipped", self.options.backlog, problem)
            self.state.problems = backlog.problems
        self.state.backlog = str(self.options.backlog)
        for item in backlog.items:
            known = self.state.items.get(item.key)
            if known is None:
                self.state.items[item.key] = ItemState(key=item.key, number=item.number, text=item.text)
            elif known.number != item.number:
                log.info("item %r renumbered %d -> %d; progress kept", item.key, known.number, item.number)
                known.number = item.number
        return backlog.items

    def pass_once(self) -> list[BacklogItem]:
        """Advance what can be advanced; returns the backlog items it worked on."""
        items = self.read_backlog()
        for item in items:
            self._follow(item, self.state.items[item.key])
        active = sum(1 for i in items if self._holds_slot(self.state.items[i.key]))
        starts: list[tuple[BacklogItem, ItemState, str]] = []
        for item in items:
            if active + len(starts) >= self.capacity:
                break
            state = self.state.items[item.key]
            if state.status == ItemStatus.WAITING:
                starts.append((item, state, item.phases[0]))
        self._start_many(starts)
        self.state.position = next(
            (n for n, i in enumerate(items) if self.state.items[i.key].status not in SETTLED), len(items)
        )
        self.save()
        self._heartbeat(items)
        return items

    def _holds_slot(self, state: ItemState) -> bool:
        """An item waiting for a decision holds only itself in parallel mode; one at a time holds everything."""
        if state.status == ItemStatus.IN_PROGRESS:
            return True
        return state.status == ItemStatus.NEEDS_DECISION and not self.options.parallel

    def all_settled(self, items: list[BacklogItem]) -> bool:
        return all(self.state.items[i.key].status in SETTLED for i in items)

    # --- items ---------------------------------------------------------------------------------------------
    def _follow(self, item: BacklogItem, state: ItemState) -> None:
        """Advance an item in flight from its task; reopen a blocked or skipped one whose task moved since."""
        if state.task_id is None or state.status not in ACTIVE | REOPENABLE:
            return
        try:
            task = self.client.get_task(state.task_id)
        except ApiNotFound:
            if state.status in ACTIVE:
                self._settle(state, ItemStatus.BLOCKED, f"{state.phase} task {state.task_id} is no longer in the store")
            state.task_id = None  # ids are never reused: there is nothing left to follow
            return
        if state.status in REOPENABLE:
            if (state.reason or "").startswith(ITEM_CAP):  # raised or cleared cap: on from where it stopped
                if self._item_cap_reached(item) is not None:
                    return
            elif not self._moved(state, task):
                return
            log.info("item %d resumed: %s task %d is now %s (the item was %s: %s)", item.number, state.phase,
                     task.id, task.status, state.status, state.reason)
            state.status, state.reason, state.settled_on = ItemStatus.IN_PROGRESS, None, None
        self._advance(item, state, task)

    @staticmethod
    def _moved(state: ItemState, task: Task) -> bool:
        """Whether the task changed since its item settled on it (an operator's retry, a late answer).

        An item settled by a state file of version 1 has no record: its task moved when it left the status that
        settled the item. That may look once more at a review that blocked its item; it blocks it again. Either
        way the record is kept from then on."""
        if state.settled_on is not None:
            return task.updated_at.isoformat() != state.settled_on
        moved = task.status != SETTLED_ON_STATUS[state.status]
        if not moved:
            state.settled_on = task.updated_at.isoformat()
        return moved

    def _advance(self, item: BacklogItem, state: ItemState, task: Task) -> None:
        assert state.phase is not None
        status = task.status
        if status in ACTIVE_STATUSES:
            if state.status == ItemStatus.NEEDS_DECISION:
                log.info("item %d: decision on task %d arrived; running again", item.number, task.id)
            state.status, state.decision_since = ItemStatus.IN_PROGRESS, None
        elif status == TaskStatus.NEEDS_DECISION:
            self._waiting_for_decision(item, state, task)
        elif status == TaskStatus.FAILED:
            tail = shorten(task.output, 200).splitlines()
            why = f"{state.phase} task {task.id} failed" + ("" if task.exit_code is None else
                                                             f" (exit code {task.exit_code})")
            self._settle(state, ItemStatus.BLOCKED, why + (f": {tail[-1]}" if tail else ""), task)
        elif status == TaskStatus.CANCELLED:
            self._settle(state, ItemStatus.CANCELLED, f"{state.phase} task {task.id} cancelled by "
                         f"{task.cancelled_by or 'an operator'}: {task.cancel_reason or '-'}", task)
        elif status == TaskStatus.COMPLETED:  # the agent's words, not the JSON around them, go to the next phases
            state.results[state.phase] = shorten("\n".join(messages(task.output or "")) or task.output)
            self._next_phase(item, state, task)

    def _waiting_for_decision(self, item: BacklogItem, state: ItemState, task: Task) -> None:
        now = utcnow()
        if state.status != ItemStatus.NEEDS_DECISION:
            log.info("item %d: task %d asks: %s", item.number, task.id, task.decision_prompt)
            state.status, state.decision_since = ItemStatus.NEEDS_DECISION, now.isoformat()
            return
        timeout_hours = self.settings.pipeline_needs_decision_timeout_hours
        since = datetime.fromisoformat(state.decision_since or now.isoformat())
        if timeout_hours and now - since > timedelta(hours=timeout_hours):
            self._decision_timed_out(item, state, task)

    def _decision_timed_out(self, item: BacklogItem, state: ItemState, task: Task) -> None:
        """Record the default answer when one is set, so the item goes on from it; without one, skip the item.

        A skipped item's question stays open: answering it later takes the item up again."""
        why = (f"decision on task {task.id} not answered within "
               f"{self.settings.pipeline_needs_decision_timeout_hours:g} h: {task.decision_prompt}")
        default = self.settings.pipeline_needs_decision_default
        if not default:
            self._settle(state, ItemStatus.SKIPPED, why, task)
            return
        try:
            self.client.decide(task.id, default, TIMEOUT_DECIDER)
        except ApiConflict:  # answered meanwhile (or our own answer, its response lost): the next pass reads it
            return
        log.warning("item %d: %s; recorded the default answer %r as %s", item.number, why, default, TIMEOUT_DECIDER)
        state.status, state.decision_since = ItemStatus.IN_PROGRESS, None

    def _item_cap_reached(self, item: BacklogItem) -> str | None:
        """Why the item may start no next phase (its tasks' summed cost reached the item cap), or None."""
        spent = self.client.spend(item=item.slug, days=1).item
        if spent is None or not spent.reached:
            return None
        return (f"{ITEM_CAP}: its tasks cost ${spent.cost_usd:.2f} of the ${spent.cap_usd:.2f} cap (raise it: "
                "coherence caps set --item N; the item goes on at the next pass)")

    def _next_phase(self, item: BacklogItem, state: ItemState, task: Task) -> None:
        phase = state.phase
        if phase == "review":
            said = (task.evidence or {}).get("verdict") or verdict(task.output)  # the runner's reading first
            if said == "pass":
                self._settle(state, ItemStatus.DONE, None)
                return
            why = "review said VERDICT: fail" if said == "fail" else "review gave no VERDICT line"
            if state.iteration >= self.options.max_iterations:
                self._settle(state, ItemStatus.BLOCKED,
                             f"{why} in round {state.iteration} of {self.options.max_iterations}", task)
                return
            if self._capped(item, state, task):
                return
            log.info("item %d: %s (task %d); back to impl", item.number, why, task.id)
            state.iteration += 1
            self._start(item, state, "impl")
            return
        following = item.phases.index(phase) + 1
        if following >= len(item.phases):
            self._settle(state, ItemStatus.DONE, None)
        elif not self._capped(item, state, task):
            self._start(item, state, item.phases[following])

    def _capped(self, item: BacklogItem, state: ItemState, task: Task) -> bool:
        """The item's next phase may not start (the item cap): it settles blocked, saying why."""
        capped = self._item_cap_reached(item)
        if capped is not None:
            self._settle(state, ItemStatus.BLOCKED, capped, task)
        return capped is not None

    def _settle(self, state: ItemState, status: str, reason: str | None, task: Task | None = None) -> None:
        """``task``: the one a blocked or skipped item settles on; it is looked at again only if that task changes."""
        state.status, state.reason, state.decision_since = status, reason, None
        state.settled_on = task.updated_at.isoformat() if task else None
        state.updated_at = utcnow().isoformat()
        logger = log.info if status == ItemStatus.DONE else log.warning
        logger("item %d %s%s", state.number, status, f": {reason}" if reason else "")

    def _start(self, item: BacklogItem, state: ItemState, phase: str) -> None:
        self._start_many([(item, state, phase)])

    def _start_many(self, starts: list[tuple[BacklogItem, ItemState, str]]) -> None:
        """Create the phases' tasks, several in one call and one transaction (the first pass over a backlog starts
        up to --max-in-flight items), and record them at once, so a crash right after cannot create them twice."""
        if not starts:
            return
        fields = [self._task_fields(item, state, phase) for item, state, phase in starts]
        if len(fields) == 1:
            made = [self.client.create_task(**fields[0])]
        else:  # a batch holds at most MAX_BATCH
            made = [task for first in range(0, len(fields), MAX_BATCH)
                    for task in self.client.create_tasks(fields[first:first + MAX_BATCH])]
        now = utcnow().isoformat()
        for (_, state, phase), task in zip(starts, made, strict=True):
            state.status, state.phase, state.task_id = ItemStatus.IN_PROGRESS, phase, task.id
            state.tasks.setdefault(phase, []).append(task.id)
            state.updated_at = now
        self.save()
        for (item, state, phase), task in zip(starts, made, strict=True):
            log.info("item %d: created %s task %d (round %d): %s", item.number, phase, task.id, state.iteration,
                     item.text[:80])

    def _task_fields(self, item: BacklogItem, state: ItemState, phase: str) -> dict[str, Any]:
        """What the phase's task is created with."""
        context = {"item": item.slug, "title": item.text[:TITLE_CHARS], "phase": phase, "iteration": state.iteration}
        if item.command is not None:
            return {"direction": item.text, "task_type": RUN_PHASE, "command": item.command, "context": context}
        # no command: the runner fills the agent template with this prompt (as a file or one argument)
        return {"direction": self.prompt(item, state, phase), "task_type": phase, "context": context}

    def prompt(self, item: BacklogItem, state: ItemState, phase: str) -> str:
        """What the agent is asked: the item, the phase and the earlier phases' results, within the API's limit."""
        head = (
            f"Backlog item {item.number}: {item.text}\n\n"
            f"Phase: {phase} (round {state.iteration} of {self.options.max_iterations})\n{PHASE_GOALS[phase]}\n"
        )
        foot = "\nIf a human must decide something first, print one line `NEEDS_DECISION: <question>` and stop.\n"
        earlier = [(p, state.results[p]) for p in PHASES if p in state.results]  # a failed review reaches impl
        if not earlier:
            return (head + foot)[:DIRECTION_LIMIT]
        budget = max(DIRECTION_LIMIT - len(head) - len(foot) - 60, 0) // len(earlier)
        sections = [f"--- {p} (task {state.tasks[p][-1]}) ---\n{shorten(text, budget)}" for p, text in earlier]
        body = "\nResults of the earlier phases (output tails, shortened):\n" + "\n".join(sections) + "\n"
        return (head + body + foot)[:DIRECTION_LIMIT]

    # --- reporting -----------------------------------------------------------------------------------------
    def summary(self, items: list[BacklogItem]) -> dict[str, Any]:
        """A small picture of the state for the component heartbeat (pipeline-status shows it)."""
        counts: dict[str, int] = {}
        for item in items:
            status = self.state.items[item.key].status
            counts[status] = counts.get(status, 0) + 1
        in_flight = [
            {"number": s.number, "item": s.text[:200], "phase": s.phase, "task_id": s.task_id, "status": s.status,
             "iteration": s.iteration}
            for s in (self.state.items[i.key] for i in items) if s.status in ACTIVE
        ]
        return {
            "backlog": self.state.backlog,
            "items": len(items),
            "settled": self.all_settled(items),  # every item done, blocked or skipped: the backlog is through
            "position": self.state.position,
            "by_status": counts,
            "in_flight": in_flight,
            "blocked": self.state.listed(ItemStatus.BLOCKED),
            "skipped": self.state.listed(ItemStatus.SKIPPED),
            "problems": self.state.problems,
            "mode": f"parallel (max {self.options.max_in_flight})" if self.options.parallel else "one at a time",
            "state_file": str(self.options.state_file),
        }

    def _heartbeat(self, items: list[BacklogItem], *, stopped: str | None = None) -> None:
        """Its summary for every view; ``stopped`` (why) on the last one, so the row reads stopped, not dead."""
        self.last_items = items
        info = self.summary(items) | ({"stopped": stopped} if stopped else {})
        try:
            self.client.component_heartbeat(COMPONENT, socket.gethostname(), os.getpid(), __version__, info)
        except ApiError as exc:  # being seen is nice to have; the work itself went through
            log.warning("heartbeat not delivered: %s", exc)

    def plan(self) -> list[str]:
        """What the next pass would do, from the state alone (nothing is created, the API is not asked)."""
        items = self.read_backlog()
        lines = [f"backlog {self.options.backlog}: {len(items)} items; state {self.options.state_file}"]
        lines += [f"skipped {p}" for p in self.state.problems]
        active = sum(1 for i in items if self._holds_slot(self.state.items[i.key]))
        for item in items:
            state = self.state.items[item.key]
            if state.status in ACTIVE:
                lines.append(f"item {item.number}: {state.status}, {state.phase} task {state.task_id}")
            elif state.status in SETTLED:
                lines.append(f"item {item.number}: {state.status}" + (f" ({state.reason})" if state.reason else ""))
            elif active < self.capacity:
                active += 1
                what = f"run task `{item.command}`" if item.command is not None else f"{item.phases[0]} task"
                lines.append(f"item {item.number}: would create {what}: {item.text}")
            else:
                lines.append(f"item {item.number}: waits for a free slot: {item.text}")
        return lines

    # --- the loop ------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Passes every ``interval`` seconds until stopped, ``hours`` pass, ``--once``, or ``--until-done``; then a
        last heartbeat says it stopped and why, so no view takes it for dead.

        Exit code: with ``until_done``, 0 when every item is done and 1 when any is blocked or skipped; otherwise 0,
        or 1 when a ``--once`` pass could not reach the API."""
        code, reason = self._passes()
        if self.last_items is not None:
            self._heartbeat(self.last_items, stopped=reason)
        return code

    def _passes(self) -> tuple[int, str]:
        deadline = time.monotonic() + self.options.hours * 3600 if self.options.hours else None
        log.info("project manager started: backlog %s, state %s, %s", self.options.backlog, self.options.state_file,
                 f"parallel (max {self.options.max_in_flight})" if self.options.parallel else "one item at a time")
        while not self.stop.is_set():
            try:
                items = self.pass_once()
            except ApiError as exc:
                log.error("pass stopped, API error: %s (state kept; next pass in %g s)", exc, self.options.interval)
                if self.options.once:
                    return 1, "--once: the API did not answer"
            else:
                if self.options.until_done and self.all_settled(items):
                    states = [self.state.items[i.key] for i in items]
                    failed = [s for s in states if s.status != ItemStatus.DONE]
                    log.info("backlog finished: %d done, %d blocked or skipped", len(states) - len(failed), len(failed))
                    return (1 if failed else 0), "backlog settled (--until-done)"
                if self.options.once:
                    return 0, "--once: one pass"
            if deadline is not None and time.monotonic() >= deadline:
                log.info("--hours %g reached; stopping", self.options.hours)
                return 0, f"--hours {self.options.hours:g} reached"
            self.stop.wait(self.options.interval)
        log.info("stopped by signal; state saved")
        return 0, "stopped by signal"

    def request_stop(self, *_: object) -> None:
        self.stop.set()
