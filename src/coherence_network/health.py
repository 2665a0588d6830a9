"""The one set of health rules: evaluated once, in the API, over one snapshot of the store and the registry.

pipeline-status's `attention`, `/metrics` (`coherence_health_issues{rule}`), `coherence status`, `coherence doctor`,
the monitor (its issues and report) and Telegram all read what this module decides, so they cannot disagree. Every
threshold comes from Settings. The monitor adds only facts of its own host (disk, local logs, version on disk).

Grading (GRADES), the same in every view: critical and high need attention (`coherence status` and doctor exit 1,
Telegram alerts); medium is a warning (shown everywhere, exit 0); low is information (shown, health unaffected).
/api/ready fails only for what stops this API replica from serving (store unreachable, migrations behind, writes
refused): those are the critical rule store_not_ready, so a replica that is not ready says so in every view too.
Every flag carries a pasteable `command` (a `coherence ...` line with the real ids) and the `console` path of the
console's own button for it (or None).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from coherence_network.contract import PAUSE_ALL, Component, Severity, TaskStatus, TaskType
from coherence_network.contract_steering import BREAKER
from coherence_network.grading import ALIVE, DEAD, SEVERITIES, STOPPED, count_states, forgotten_runner, state_of
from coherence_network.setting_values import seen_limit
from coherence_network.settings import Settings

if TYPE_CHECKING:  # the monitor and the CLI read health over HTTP: they need not load the store to grade it
    from coherence_network.store import TaskStore
    from coherence_network.store.stats import Limits

MANAGER = Component.MANAGER
MONITOR = Component.MONITOR
# Components that run until stopped and keep a registry row alive; one-shot commands (doctor, status...) never
# register, and rows under other names (left by older versions) are not judged.
LONG_LIVED = (MANAGER, MONITOR)
# Backlog item states in the project manager's summary that still need it to run.
UNSETTLED_ITEMS = ("waiting", "in_progress", "needs_decision")


def host_issues(issues: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The monitor's issues that are facts of its host: the health rules are evaluated live, so a monitor issue
    named after one (posted by an older monitor) is not shown twice."""
    return [i for i in issues if i["rule"] not in BY_NAME]


@dataclass
class HealthSnapshot:
    """What the store and the registry say at one moment: everything the rules look at."""

    now: datetime
    by_status: dict[str, int]
    running: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    needs_decision: list[dict[str, Any]] = field(default_factory=list)
    recent: list[dict[str, Any]] = field(default_factory=list)
    success_24h: dict[str, Any] | None = None
    runners: list[dict[str, Any]] = field(default_factory=list)  # rows with `seen` and `last_seen_seconds`
    components: dict[str, dict[str, Any]] = field(default_factory=dict)  # likewise, by name
    fatal: list[dict[str, Any]] = field(default_factory=list)  # fatal issues not cleared, oldest first
    ready: list[dict[str, Any]] = field(default_factory=list)  # /api/ready's checks of this replica
    host_issues: list[dict[str, Any]] = field(default_factory=list)  # the monitors' open facts of their hosts
    pauses: list[dict[str, Any]] = field(default_factory=list)  # paused scopes ("all" or a type), oldest first
    oldest_decision_seconds: float | None = None  # how long the longest-waiting decision has waited (None: none)
    spend_today: dict[str, Any] | None = None  # today's spend against the day cap (store/costs.py spend_today)


@dataclass(frozen=True)
class Found:
    """What a rule found: the message, the tasks concerned, and a severity when it differs from the rule's."""

    message: str
    task_ids: list[int] = field(default_factory=list)
    severity: Severity | None = None
    values: dict[str, str] = field(default_factory=dict)  # what the command needs besides the first task id


Finding = Found | None


@dataclass(frozen=True)
class HealthRule:
    """A condition, how serious it is, what a person does about it, and which component a restart would fix."""

    name: str
    severity: Severity
    condition: str
    action: str
    runbook: str
    check: Callable[[HealthSnapshot, Settings], Finding]
    command: str  # pasteable; {id} is the first task concerned, other {names} come from Found.values
    console: str | None = None  # the console page whose button does it; {id} likewise
    restart: Component | None = None

    def flag(self, snapshot: HealthSnapshot, settings: Settings) -> dict[str, Any] | None:
        found = self.check(snapshot, settings)
        if found is None:
            return None
        values = {"id": str(found.task_ids[0]) if found.task_ids else "", **found.values}
        return {"rule": self.name, "severity": found.severity or self.severity, "message": found.message,
                "action": self.action, "runbook": self.runbook, "task_ids": found.task_ids,
                "command": self.command.format(**values),
                "console": self.console.format(**values) if self.console else None}


def mark_seen(row: dict[str, Any], now: datetime, limit: float) -> dict[str, Any]:
    """A registry row with how long ago it was seen and its state: stopped when its last heartbeat said so
    (info.stopped holds why), else alive within ``limit`` seconds, else dead. Only an alive row counts as seen."""
    age = (now - row["last_seen"]).total_seconds()
    stopped = (row.get("info") or {}).get("stopped")
    state = STOPPED if stopped else ALIVE if age <= limit else DEAD
    return {**row, "last_seen_seconds": round(age, 3), "seen": state == ALIVE, "state": state,
            "seen_limit_seconds": round(limit, 3)}


def runner_seen_limit(row: dict[str, Any], settings: Settings) -> float:
    """How long a runner may be silent and still count as alive: MONITOR_RUNNER_SEEN_SECONDS when the operator set
    it; else derived from the heartbeat interval the runner reports (one on another host may use its own), else
    from this host's COHERENCE_RUNNER_HEARTBEAT_SECONDS (the setting's derived default)."""
    interval = (row.get("info") or {}).get("heartbeat_seconds")
    derived = settings.source_of("monitor_runner_seen_seconds").startswith("derived")
    if derived and isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval > 0:
        return seen_limit(float(interval))
    return settings.monitor_runner_seen_seconds  # type: ignore[return-value]  # derived: never None


def forgotten(row: dict[str, Any], now: datetime, settings: Settings) -> bool:
    """A runner row past its time: unseen for COHERENCE_RUNNER_FORGET_SECONDS, or stopped and unseen for
    COHERENCE_RUNNER_FORGET_STOPPED_SECONDS. No view shows it; the API's registry pass deletes it soon after."""
    return forgotten_runner(row["last_seen"], row.get("info"),
                            now - timedelta(seconds=settings.coherence_runner_forget_seconds),
                            now - timedelta(seconds=settings.coherence_runner_forget_stopped_seconds))


def gather(store: TaskStore, settings: Settings, now: datetime, limits: Limits | None = None,
           ready: list[dict[str, Any]] | None = None) -> HealthSnapshot:
    """One snapshot from the store (and this replica's readiness checks, when given); a read, it writes nothing
    (runners past COHERENCE_RUNNER_FORGET_SECONDS are forgotten by the API's registry pass, api/metrics.py)."""
    found = store.pipeline_snapshot(now, settings.pipeline_failure_streak, limits)
    leases = store.running_leases()  # what orphan_running needs beyond the summary columns
    for task in found["running"]:
        lease = leases.get(task["id"], {})
        task["lease_expires_at"] = lease.get("lease_expires_at")
        task["timeout_seconds"] = lease.get("timeout_seconds")
    return HealthSnapshot(
        now=now, by_status=store.count()["by_status"], running=found["running"], pending=found["pending"],
        needs_decision=found["needs_decision"], recent=found["recent"], success_24h=found["success_24h"],
        runners=[mark_seen(r, now, runner_seen_limit(r, settings)) for r in store.runners()
                 if not forgotten(r, now, settings)],
        components={c["name"]: mark_seen(c, now, settings.monitor_component_seen_seconds)
                    for c in store.components() if c["name"] in LONG_LIVED},
        fatal=store.list_fatal_issues(),
        ready=ready or [],
        host_issues=host_issues(store.list_monitor_issues(resolved_limit=0)["issues"]),
        pauses=store.pauses(),
        oldest_decision_seconds=found["oldest_decision_seconds"],
        spend_today=store.spend_today(now),
    )


def live_runners(snapshot: HealthSnapshot) -> int:
    return sum(1 for r in snapshot.runners if r["seen"])


# --- the rules ------------------------------------------------------------------------------------------------
def _stuck(s: HealthSnapshot, cfg: Settings) -> Finding:
    stuck = [t["id"] for t in s.running if (t["elapsed_seconds"] or 0) > cfg.pipeline_stuck_minutes * 60]
    return Found(f"{len(stuck)} task(s) running longer than {cfg.pipeline_stuck_minutes:g} min", stuck) if stuck \
        else None


def _stalled_task(s: HealthSnapshot, cfg: Settings) -> Finding:
    """A running task that printed nothing for COHERENCE_STALL_WARN_SECONDS (its runner's heartbeats say how long):
    an agent waiting on a prompt or hung. Its runner stops it at COHERENCE_STALL_STOP_SECONDS (when set)."""
    silent = sorted(((t["silent_seconds"], t["id"]) for t in s.running
                     if (t.get("silent_seconds") or 0) > cfg.coherence_stall_warn_seconds), reverse=True)
    if not silent:
        return None
    stop = cfg.coherence_stall_stop_seconds
    then = f"; stopped at {stop / 60:.0f} min" if stop else ""
    return Found(f"{len(silent)} running task(s) printed nothing for over {cfg.coherence_stall_warn_seconds / 60:.0f} "
                 f"min (the longest {silent[0][0] / 60:.0f} min{then})", [i for _, i in silent])


def _orphan_running(s: HealthSnapshot, cfg: Settings) -> Finding:
    """A lease long expired means the API's reaper is not running; a task far past its timeout, a hung runner."""
    grace = cfg.monitor_orphan_grace_seconds
    lease_gone = [t["id"] for t in s.running if t["lease_expires_at"] is not None
                  and (s.now - t["lease_expires_at"]).total_seconds() > grace]
    overtime = [t["id"] for t in s.running if t["id"] not in lease_gone
                and (t["elapsed_seconds"] or 0) > (t["timeout_seconds"] or cfg.agent_task_timeout) + grace]
    if not lease_gone and not overtime:
        return None
    return Found(f"{len(lease_gone) + len(overtime)} running task(s) look orphaned ({len(lease_gone)} lease "
                 f"expired, {len(overtime)} past their timeout, by over {grace:.0f} s)", lease_gone + overtime)


def _paused(s: HealthSnapshot, _: Settings) -> Finding:
    """A deliberate hold (an operator paused the pipeline or a type): a warning on every signal, with who and why,
    so nobody takes the idle queue for a fault and nobody forgets to resume it. The breaker's own pauses are
    breaker_open's (high), not repeated here."""
    held = [p for p in s.pauses if p["by"] != BREAKER]
    if not held:
        return None
    named = "; ".join(f"{p['scope']} since {p['since']:%Y-%m-%d %H:%M:%S} UTC by {p['by']}: {p['reason']}"
                      for p in held)
    first = held[0]["scope"]
    return Found(f"paused ({named}); claims hand out nothing of it, running tasks finish",
                 values={"type": "" if first == PAUSE_ALL else f" --type {first}"})


def _breaker_open(s: HealthSnapshot, _: Settings) -> Finding:
    """A task type failed its breaker_failures times in a row and paused itself (store/failures.py): only an
    operator resumes it, so this needs attention where a deliberate pause is a warning."""
    tripped = [p for p in s.pauses if p["by"] == BREAKER]
    if not tripped:
        return None
    named = "; ".join(f"{p['scope']} since {p['since']:%Y-%m-%d %H:%M:%S} UTC ({p['reason']})" for p in tripped)
    return Found(f"the circuit breaker paused {named}", values={"type": tripped[0]["scope"]})


def _held_types(s: HealthSnapshot) -> set[str] | None:
    """The task types a pause holds (None: the whole pipeline is paused)."""
    scopes = {p["scope"] for p in s.pauses}
    return None if PAUSE_ALL in scopes else scopes


def _no_task_running(s: HealthSnapshot, cfg: Settings) -> Finding:
    held = _held_types(s)
    if held is None or (s.spend_today or {}).get("reached"):
        return None  # a paused pipeline, or the day cap, holds work on purpose: the rules paused and day_cap_reached
    waits = [p["oldest_wait_seconds"] or 0.0 for kind, p in s.pending.items() if kind not in held]
    if s.running or not waits or max(waits) < cfg.monitor_idle_minutes * 60:
        return None
    pending = sum(p["count"] for kind, p in s.pending.items() if kind not in held)
    return Found(f"{pending} task(s) pending, nothing running; the oldest waits {max(waits) / 60:.0f} min")


def _no_runner(s: HealthSnapshot, cfg: Settings) -> Finding:
    work = s.by_status.get(TaskStatus.PENDING, 0) + s.by_status.get(TaskStatus.RUNNING, 0)
    if not work or live_runners(s):
        return None
    last = f"runners: {count_states(s.runners)}" if s.runners else "none ever seen"
    return Found(f"{work} task(s) pending or running but no runner alive ({last})")


def _runner_blocked(s: HealthSnapshot, _: Settings) -> Finding:
    """A live runner whose slots cannot work on its host (its heartbeat says so: a full or read-only disk)."""
    blocked = [r for r in s.runners if r["seen"] and ((r.get("info") or {}).get("slots_blocked") or 0) > 0]
    if not blocked:
        return None
    named = "; ".join(f"{r['id']}: {r['info']['slots_blocked']} of {r['info'].get('workers', '?')} slot(s) blocked "
                      f"({r['info'].get('last_error') or 'no error given'})" for r in blocked)
    return Found(f"{len(blocked)} runner(s) cannot run tasks on their host: {named}")


def _component_held_back(s: HealthSnapshot, _: Settings) -> Finding:
    """A component kept crashing: its supervisor holds it back (a fatal issue) while the rest runs on, so nothing
    else says so until it is cleared."""
    if not s.fatal:
        return None
    named = "; ".join(f"{i['component']} on {i.get('host') or '?'}: {i['reason']}" for i in s.fatal)
    return Found(f"{len(s.fatal)} fatal issue(s), the component held back: {named}")


def _store_not_ready(s: HealthSnapshot, _: Settings) -> Finding:
    """This API replica's /api/ready fails (its store refuses writes, say): the same checks, so both agree."""
    failed = [c for c in s.ready if not c["ok"]]
    if not failed:
        return None
    return Found("this API is not ready: " + "; ".join(f"{c['name']}: {c['detail']}" for c in failed),
                 values={"fix": _ready_fix(failed[0])})


def _ready_fix(check: dict[str, Any]) -> str:
    """The command for a failed readiness check: old task logs go for a full disk, migrations run; what no command
    fixes (a read-only PostgreSQL, an unreachable store) doctor names in full."""
    if check["name"] == "migrations_current":
        return "coherence migrate"
    if check["name"] == "store_writable" and "PostgreSQL" not in str(check["detail"]):
        return "coherence cleanup --days 3"
    return "coherence doctor"


def _manager_stale(s: HealthSnapshot, cfg: Settings) -> Finding:
    manager = s.components.get(MANAGER)
    if manager is None or manager["seen"]:
        return None
    info = manager.get("info") or {}
    if not any((info.get("by_status") or {}).get(k) for k in UNSETTLED_ITEMS):
        return None  # it finished its backlog; silence is expected
    why = f"stopped ({info['stopped']})" if state_of(manager) == STOPPED else \
        f"silent (limit {cfg.monitor_component_seen_seconds:.0f} s)"
    return Found(f"the project manager is {why}, last seen {manager['last_seen_seconds']:.0f} s ago, with backlog "
                 "items unsettled", values={"backlog": shlex.quote(str(info.get("backlog") or "backlog.md"))})


def _needs_decision(s: HealthSnapshot, cfg: Settings) -> Finding:
    waiting = [t["id"] for t in s.needs_decision]
    if not waiting:
        return None
    # over every waiting task (the store's figure), not only the ones listed
    oldest = max([s.oldest_decision_seconds or 0.0, *(t["waiting_seconds"] or 0.0 for t in s.needs_decision)])
    overdue = oldest >= cfg.monitor_decision_wait_minutes * 60  # a person's turn from the start; urgent after this
    return Found(f"{len(waiting)} task(s) wait for a decision; the oldest for {oldest / 60:.0f} min", waiting,
                 Severity.HIGH if overdue else None)


def _repeated_failures(s: HealthSnapshot, cfg: Settings) -> Finding:
    streak = s.recent[: cfg.pipeline_failure_streak]
    if len(streak) < cfg.pipeline_failure_streak or any(t["status"] != TaskStatus.FAILED for t in streak):
        return None
    return Found(f"the last {len(streak)} finished tasks all failed", [t["id"] for t in streak])


def _low_success_rate(s: HealthSnapshot, cfg: Settings) -> Finding:
    rate = s.success_24h
    if rate is None:
        return None
    finished = rate["completed"] + rate["failed"]
    if finished < cfg.pipeline_success_rate_min_tasks or rate["success_rate"] >= cfg.pipeline_min_success_rate:
        return None
    return Found(f"24 h success rate {rate['success_rate']:.0%} over {finished} tasks "
                 f"(threshold {cfg.pipeline_min_success_rate:.0%})")


def _day_cap_reached(s: HealthSnapshot, _: Settings) -> Finding:
    """Today's spend reached the day cap (store/costs.py): claims hand out no agent task until 00:00 UTC or until
    the cap is raised, so agent work stops on purpose but needs a person's decision."""
    today = s.spend_today
    if not today or not today["reached"]:
        return None
    running = today.get("running_usd") or 0.0
    going = f" (${running:.2f} of it by runs going on)" if running else ""
    return Found(f"today's agent spend ${today['cost_usd'] + running:.2f}{going} reached the day cap "
                 f"${today['cap_usd']:.2f} "
                 f"(UTC day {today['day']}): claims hand out no agent task until 00:00 UTC or a raised cap; run "
                 "tasks go on", values={"raised": f"{today['cap_usd'] * 2:g}"})


def _empty_output(s: HealthSnapshot, _: Settings) -> Finding:
    # a `run:` command may be silent by design; an agent that says nothing is broken
    empty = [t["id"] for t in s.recent if t["status"] == TaskStatus.COMPLETED and t["task_type"] != TaskType.RUN
             and not t["output_chars"]]
    return Found(f"{len(empty)} recently completed agent task(s) produced no output", empty) if empty else None


RULES: tuple[HealthRule, ...] = (
    HealthRule("store_not_ready", Severity.CRITICAL, "this API replica's /api/ready fails: its store is unreachable, "
               "behind on migrations, or refuses writes (a full or read-only disk)", "free disk space under "
               "COHERENCE_HOME and the store's folder (old task logs: the command), run the migrations, or bring the "
               "store back",
               "#api-restart", _store_not_ready, "{fix}"),
    HealthRule("no_runner", Severity.HIGH, "tasks pending or running but no runner alive (a heartbeat within two of "
               "its intervals, MONITOR_RUNNER_SEEN_SECONDS for a runner that does not say its interval)",
               "start a runner (make run starts the whole pipeline)", "#pipeline-recovery", _no_runner,
               "coherence runner", restart=Component.RUNNER),
    HealthRule("runner_blocked", Severity.HIGH, "a live runner reports slots that cannot start tasks on its host (its "
               "log or outbox cannot be written: a full or read-only disk); their tasks go back to pending unused",
               "free disk space under the runner's COHERENCE_HOME (df -h), then watch it recover",
               "#a-full-disk", _runner_blocked, "coherence prune"),
    HealthRule("component_held_back", Severity.HIGH, "a component crashed SUPERVISOR_FATAL_RESTARTS times within "
               "SUPERVISOR_FATAL_WINDOW_SECONDS: its supervisor holds it back (a fatal issue) while the rest runs on",
               "read it (coherence fatal), fix the cause, then clear it: the component starts again",
               "#autonomous-pipeline", _component_held_back, "coherence fatal --clear"),
    HealthRule("manager_stale", Severity.MEDIUM, "project manager stopped, or silent for "
               "MONITOR_COMPONENT_SEEN_SECONDS, with backlog items unsettled", "start it again on its backlog",
               "#pipeline-recovery", _manager_stale,
               "coherence pm --backlog {backlog}", restart=MANAGER),
    HealthRule("no_task_running", Severity.HIGH, "tasks pending for MONITOR_IDLE_MINUTES while nothing runs",
               "check the runners (coherence status), then restart them", "#pipeline-recovery",
               _no_task_running, "coherence restart agent_runner", "/#restart", restart=Component.RUNNER),
    HealthRule("orphan_running", Severity.HIGH, "a running task's lease expired, or its timeout passed, by more than "
               "MONITOR_ORPHAN_GRACE_SECONDS", "restart the API (lease reaper) or the runner holding it",
               "#orphaned-or-stuck-tasks", _orphan_running, "coherence restart api", "/#restart",
               restart=Component.API),
    HealthRule("stalled_task", Severity.MEDIUM, "a running task printed nothing for COHERENCE_STALL_WARN_SECONDS (its "
               "runner stops it at COHERENCE_STALL_STOP_SECONDS)", "read its log; cancel it if it waits on "
               "something that will not come", "#stalls", _stalled_task, "coherence logs {id}", "/tasks/{id}"),
    HealthRule("paused", Severity.MEDIUM, "an operator paused the whole pipeline or a task type (coherence pause): "
               "claims hand out nothing of it while running tasks finish", "resume it once the cause is gone",
               "#pause-and-resume", _paused, "coherence resume{type}", "/pauses"),
    HealthRule("day_cap_reached", Severity.HIGH, "today's spend (runs finished since 00:00 UTC) reached the day cap "
               "(COHERENCE_COST_CAP_DAY_USD or coherence caps set --day): no agent task is handed out",
               "raise the cap (the command doubles it; takes effect at once) or wait for the UTC day to turn",
               "#costs-and-caps", _day_cap_reached, "coherence caps set --day {raised}"),
    HealthRule("stuck", Severity.MEDIUM, "a task has run longer than PIPELINE_STUCK_MINUTES", "read its log",
               "#orphaned-or-stuck-tasks", _stuck, "coherence logs {id}", "/tasks/{id}"),
    HealthRule("breaker_open", Severity.HIGH, "a task type's runs failed COHERENCE_BREAKER_FAILURES (or its "
               "type_policies breaker_failures) times in a row, and the circuit breaker paused the type",
               "read the type's last failures and fix the cause, then resume it (an operator's act)",
               "#the-circuit-breaker", _breaker_open, "coherence resume --type {type}"),
    HealthRule("needs_decision", Severity.MEDIUM, "a task waits for a decision (a person's turn); high once the oldest "
               "waited MONITOR_DECISION_WAIT_MINUTES", "answer it (or in Telegram: /reply ID ANSWER)",
               "#unblock-a-task-that-needs-a-decision", _needs_decision, "coherence decide {id} ANSWER",
               "/decisions"),
    HealthRule("repeated_failures", Severity.HIGH, "the last PIPELINE_FAILURE_STREAK finished tasks all failed",
               "read the newest failure's log", "#pipeline-recovery", _repeated_failures, "coherence logs {id}",
               "/tasks/{id}"),
    HealthRule("low_success_rate", Severity.MEDIUM, "24 h success rate below PIPELINE_MIN_SUCCESS_RATE (once "
               "PIPELINE_SUCCESS_RATE_MIN_TASKS finished)", "read the failed tasks' logs", "#pipeline-effectiveness",
               _low_success_rate, "coherence tasks --status failed", "/tasks?status=failed"),
    HealthRule("empty_output", Severity.MEDIUM, "a recently completed agent task (not a `run:` command) produced no "
               "output",
               "check the agent (`coherence doctor`: COHERENCE_AGENT and its install) and the task's log",
               "#pipeline-recovery", _empty_output,
               "coherence logs {id}", "/tasks/{id}"),
)
BY_NAME = {rule.name: rule for rule in RULES}


def evaluate(snapshot: HealthSnapshot, settings: Settings) -> list[dict[str, Any]]:
    """Every rule over one snapshot, and the monitors' facts of their hosts: the attention flags open now, each
    once, most serious first. A host fact is marked ``source: "monitor"`` with its ``host`` and ``since``."""
    flags = [flag for rule in RULES if (flag := rule.flag(snapshot, settings)) is not None]
    flags += [host_flag(issue) for issue in snapshot.host_issues]
    return sorted(flags, key=lambda f: SEVERITIES.index(f["severity"]) if f["severity"] in SEVERITIES else 1)


def host_flag(issue: dict[str, Any]) -> dict[str, Any]:
    """A monitor's open issue as a flag, graded like the rules' flags, with its rule's pasteable command."""
    from coherence_network.monitor import with_command  # the monitor's rules know their commands; it imports us

    issue = with_command(issue)
    return {"rule": issue["rule"], "severity": issue["severity"], "message": issue["message"],
            "action": issue["action"], "runbook": issue["runbook"], "task_ids": [], "command": issue["command"],
            "console": issue["console"], "source": "monitor", "host": issue["host"], "since": issue["first_seen"]}


def from_monitor(flag: dict[str, Any]) -> bool:
    return flag.get("source") == "monitor"
