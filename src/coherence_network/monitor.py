"""Monitor: fetch a snapshot of the pipeline, evaluate rules over it, keep issues, write the layered status report.

Rules are pure functions of (Snapshot, Settings), so each one is unit-tested without servers. Each rule names its
severity, the action an operator (or auto-recovery) takes, and the runbook section that explains it. With
PIPELINE_AUTO_RECOVER the monitor asks the supervisor for a restart (var/logs/restart_requested.json) when the rule's
condition is one a restart fixes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from coherence_network import __version__
from coherence_network.client import ApiClient, ApiError, ApiNotFound
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.logfiles import REGISTRY, write_json_atomic
from coherence_network.settings import Settings
from coherence_network.versioning import SOURCE_DIR, source_sha_on_disk

log = logging.getLogger("coherence.monitor")

COMPONENT = "monitor"
MANAGER = "project_manager"
UNSETTLED_ITEMS = ("waiting", "in_progress", "needs_decision")
_ERROR_LINE = re.compile(r'^\S+ (ERROR|CRITICAL) |"level": "(ERROR|CRITICAL)"')
_SAMPLE_LINES = 5


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def age_seconds(now: datetime, when: str | datetime | None) -> float | None:
    """Seconds since an API timestamp (ISO text) or datetime; None when absent."""
    if when is None:
        return None
    moment = datetime.fromisoformat(when) if isinstance(when, str) else when
    return (now - moment).total_seconds()


# --- snapshot -----------------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """Everything the rules look at, gathered once per check (API answers plus local facts of this host)."""

    now: datetime
    api_reachable: bool = True
    api_errors: list[str] = field(default_factory=list)
    counts: dict[str, Any] | None = None
    running: list[dict[str, Any]] = field(default_factory=list)
    oldest_pending: dict[str, Any] | None = None
    oldest_decision: dict[str, Any] | None = None
    decisions_waiting: int = 0
    runners: list[dict[str, Any]] = field(default_factory=list)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipeline: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    running_shas: dict[str, str | None] = field(default_factory=dict)  # who runs which code: "pipeline", "api"
    disk_sha: str | None = None
    disk_free_bytes: int | None = None
    log_errors: dict[str, list[str]] = field(default_factory=dict)  # log file -> new ERROR lines


@dataclass
class Issue:
    rule: str
    severity: str
    message: str
    action: str
    runbook: str
    detail: dict[str, Any] = field(default_factory=dict)
    restart: str | None = None  # the component a restart would fix, for auto-recovery


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    condition: str
    action: str
    runbook: str
    check: Callable[[Snapshot, Settings], tuple[str, dict[str, Any], str | None] | None]

    def evaluate(self, snapshot: Snapshot, settings: Settings) -> Issue | None:
        found = self.check(snapshot, settings)
        if found is None:
            return None
        message, detail, restart = found
        return Issue(self.name, self.severity, message, self.action, self.runbook, detail, restart)


Finding = tuple[str, dict[str, Any], str | None] | None


def _api_unreachable(s: Snapshot, _: Settings) -> Finding:
    if s.api_reachable:
        return None
    return "the API does not answer", {"errors": s.api_errors}, "api"


def _api_error(s: Snapshot, _: Settings) -> Finding:
    if not s.api_reachable or not s.api_errors:
        return None
    return f"the API answers with errors: {'; '.join(s.api_errors)[:500]}", {"errors": s.api_errors}, None


def _stale_version(s: Snapshot, _: Settings) -> Finding:
    disk = s.disk_sha
    stale = {who: sha for who, sha in s.running_shas.items() if sha and disk and sha != disk}
    if not disk or not stale:
        return None
    running = ", ".join(f"{who} {sha[:12]}" for who, sha in sorted(stale.items()))
    return f"running code ({running}) differs from the source on disk ({disk[:12]})", \
        {"running": stale, "disk": disk}, "all"


def _runner_not_seen(s: Snapshot, cfg: Settings) -> Finding:
    if s.counts is None:
        return None
    ages = [a for a in (age_seconds(s.now, r.get("last_seen")) for r in s.runners) if a is not None]
    if any(a <= cfg.monitor_runner_seen_seconds for a in ages):
        return None
    work = s.counts["by_status"].get(TaskStatus.PENDING, 0) + s.counts["by_status"].get(TaskStatus.RUNNING, 0)
    if not ages and not work:
        return None  # nothing set up yet, nothing to do
    last = f"last seen {min(ages):.0f} s ago" if ages else "never seen"
    return f"no runner seen in {cfg.monitor_runner_seen_seconds:.0f} s ({last}); {work} task(s) waiting or running", \
        {"last_seen_seconds": min(ages) if ages else None, "work": work}, "agent_runner"


def _manager_not_seen(s: Snapshot, cfg: Settings) -> Finding:
    manager = s.components.get(MANAGER)
    if manager is None:
        return None
    age = age_seconds(s.now, manager.get("last_seen"))
    by_status = (manager.get("info") or {}).get("by_status", {})
    if age is None or age <= cfg.monitor_component_seen_seconds or not any(by_status.get(k) for k in UNSETTLED_ITEMS):
        return None
    return f"the project manager was last seen {age:.0f} s ago with backlog items unsettled", \
        {"last_seen_seconds": round(age, 1), "by_status": by_status}, MANAGER


def _no_task_running(s: Snapshot, cfg: Settings) -> Finding:
    if s.oldest_pending is None or s.running:
        return None
    waited = age_seconds(s.now, s.oldest_pending.get("created_at")) or 0.0
    if waited < cfg.monitor_idle_minutes * 60:
        return None
    pending = s.counts["by_status"].get(TaskStatus.PENDING, 0) if s.counts else 1
    return f"{pending} task(s) pending, nothing running; the oldest waits {waited / 60:.0f} min", \
        {"pending": pending, "oldest_task_id": s.oldest_pending["id"], "waited_seconds": round(waited, 1)}, \
        "agent_runner"


def _orphan_running(s: Snapshot, cfg: Settings) -> Finding:
    lease_gone, overtime = [], []
    for task in s.running:
        expired = age_seconds(s.now, task.get("lease_expires_at"))
        if expired is not None and expired > cfg.monitor_orphan_grace_seconds:
            lease_gone.append(task["id"])
            continue
        elapsed = age_seconds(s.now, task.get("started_at")) or 0.0
        if elapsed > (task.get("timeout_seconds") or cfg.agent_task_timeout) + cfg.monitor_orphan_grace_seconds:
            overtime.append(task["id"])
    if not lease_gone and not overtime:
        return None
    # a lease long expired means the API's reaper is not running; a task far past its timeout, a runner that hangs
    restart = "agent_runner" if overtime else "api"
    return f"{len(lease_gone) + len(overtime)} running task(s) look orphaned", \
        {"lease_expired": lease_gone, "past_timeout": overtime}, restart


def _needs_decision_waiting(s: Snapshot, cfg: Settings) -> Finding:
    if s.oldest_decision is None:
        return None
    waited = age_seconds(s.now, s.oldest_decision.get("updated_at")) or 0.0
    if waited < cfg.monitor_decision_wait_minutes * 60:
        return None
    return f"{s.decisions_waiting} task(s) wait for a decision; the oldest ({s.oldest_decision['id']}) for " \
        f"{waited / 60:.0f} min", {"count": s.decisions_waiting, "oldest_task_id": s.oldest_decision["id"],
                                    "oldest_seconds": round(waited, 1)}, None


def _recent(s: Snapshot) -> list[dict[str, Any]]:
    return (s.pipeline or {}).get("recent") or []


def _repeated_failures(s: Snapshot, cfg: Settings) -> Finding:
    streak = _recent(s)[: cfg.pipeline_failure_streak]
    if len(streak) < cfg.pipeline_failure_streak or any(t["status"] != TaskStatus.FAILED for t in streak):
        return None
    return f"the last {len(streak)} finished tasks all failed", {"task_ids": [t["id"] for t in streak]}, None


def _low_success_rate(s: Snapshot, cfg: Settings) -> Finding:
    rate = (s.pipeline or {}).get("success_24h")
    if rate is None:
        return None
    finished = rate["completed"] + rate["failed"]
    if finished < cfg.pipeline_success_rate_min_tasks or rate["success_rate"] >= cfg.pipeline_min_success_rate:
        return None
    return f"24 h success rate {rate['success_rate']:.0%} over {finished} tasks " \
        f"(threshold {cfg.pipeline_min_success_rate:.0%})", dict(rate), None


def _output_empty(s: Snapshot, _: Settings) -> Finding:
    # a `run:` command may be silent by design; an agent that says nothing is broken
    empty = [t["id"] for t in _recent(s) if t["status"] == TaskStatus.COMPLETED
             and t.get("task_type") != TaskType.RUN and not t.get("output_chars")]
    if not empty:
        return None
    return f"{len(empty)} recently completed agent task(s) produced no output", {"task_ids": empty}, None


def _disk_low(s: Snapshot, cfg: Settings) -> Finding:
    limit = cfg.monitor_disk_min_free_mb * 1024 * 1024
    if s.disk_free_bytes is None or s.disk_free_bytes >= limit:
        return None
    return f"{s.disk_free_bytes / 2**20:.0f} MiB free under the log folder (minimum " \
        f"{cfg.monitor_disk_min_free_mb:.0f} MiB)", {"free_bytes": s.disk_free_bytes}, None


def _log_errors(s: Snapshot, _: Settings) -> Finding:
    if not s.log_errors:
        return None
    counts = {name: len(lines) for name, lines in s.log_errors.items()}
    sample = [line for lines in s.log_errors.values() for line in lines][-_SAMPLE_LINES:]
    return f"{sum(counts.values())} new ERROR line(s) in {', '.join(sorted(counts))}", \
        {"by_file": counts, "sample": sample}, None


_CURL_DECIDE = ("curl -X PATCH $AGENT_API_BASE/api/agent/tasks/{id} -H 'Content-Type: application/json' "
                "-d '{\"decision\":\"yes\"}'")
RULES: tuple[Rule, ...] = (
    Rule("api_unreachable", "critical", "GET /api/health fails", "coherence supervise (or start the API: coherence "
         "api); see var/logs/api.log", "#api-restart", _api_unreachable),
    Rule("api_error", "high", "the API answers but /api/ready or an endpoint fails", "coherence doctor; read "
         "var/logs/api.log (store reachable? migrations current: coherence migrate)", "#api-restart", _api_error),
    Rule("stale_version", "medium", "running code differs from the package source on disk",
         "restart the pipeline: coherence stop && scripts/run_autonomous.sh", "#autonomous-pipeline", _stale_version),
    Rule("runner_not_seen", "high", "work exists but no runner heartbeat within MONITOR_RUNNER_SEEN_SECONDS",
         "start a runner: coherence runner (or coherence supervise)", "#pipeline-recovery", _runner_not_seen),
    Rule("manager_not_seen", "medium", "project manager silent for MONITOR_COMPONENT_SEEN_SECONDS with items "
         "unsettled", "start it: coherence pm --backlog <file>", "#pipeline-recovery", _manager_not_seen),
    Rule("no_task_running", "high", "tasks pending for MONITOR_IDLE_MINUTES while nothing runs",
         "check the runners (coherence status); restart one: coherence runner", "#pipeline-recovery",
         _no_task_running),
    Rule("orphan_running", "high", "a running task's lease expired, or its timeout passed, by more than "
         "MONITOR_ORPHAN_GRACE_SECONDS", "restart the API (lease reaper) or the runner holding it",
         "#orphaned-or-stuck-tasks", _orphan_running),
    Rule("needs_decision_waiting", "medium", "a task has waited MONITOR_DECISION_WAIT_MINUTES for a decision",
         f"answer it: {_CURL_DECIDE}", "#unblock-a-task-that-needs-a-decision", _needs_decision_waiting),
    Rule("repeated_failures", "high", "the last PIPELINE_FAILURE_STREAK finished tasks all failed",
         "read the task logs: coherence status --task-id <id> --log", "#pipeline-recovery", _repeated_failures),
    Rule("low_success_rate", "medium", "24 h success rate below PIPELINE_MIN_SUCCESS_RATE",
         "read failed task logs: coherence status --task-id <id> --log", "#pipeline-effectiveness", _low_success_rate),
    Rule("output_empty", "medium", "a recently completed agent task produced no output",
         "check COHERENCE_AGENT_COMMAND and the task's log", "#pipeline-recovery", _output_empty),
    Rule("disk_low", "high", "free space under var/logs below MONITOR_DISK_MIN_FREE_MB",
         "free space: coherence cleanup --days 3", "#tests-and-cleanup", _disk_low),
    Rule("log_errors", "low", "new ERROR lines in component logs since the last check",
         "read the lines named in the issue's detail", "#log-locations", _log_errors),
)


def evaluate(snapshot: Snapshot, settings: Settings) -> list[Issue]:
    """Every rule over one snapshot: the issues open now."""
    return [issue for rule in RULES if (issue := rule.evaluate(snapshot, settings)) is not None]


# --- gathering ----------------------------------------------------------------------------------------------
class LogTailer:
    """New ERROR lines in component logs since the last scan; offsets survive restarts in the monitor's state.

    A log seen for the first time is read from its end (old errors were someone else's news); a file that shrank
    was rotated and is read from the start."""

    def __init__(self, logs_dir: Path, offsets: dict[str, int]) -> None:
        self.logs_dir = logs_dir
        self.offsets = dict(offsets)
        self.names = sorted(f.name for f in REGISTRY.values() if f.kind == "log" and f.name != f"{COMPONENT}.log")

    def scan(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for name in self.names:
            path = self.logs_dir / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                self.offsets.pop(name, None)
                continue
            start = self.offsets.get(name)
            if start is None:
                self.offsets[name] = size
                continue
            if size < start:
                start = 0
            with path.open("rb") as handle:
                handle.seek(start)
                chunk = handle.read(size - start)
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offsets[name] = start + len(complete)
            lines = [ln for ln in complete.decode("utf-8", errors="replace").splitlines() if _ERROR_LINE.search(ln)]
            if lines:
                found[name] = lines
        return found


def _optional(call: Callable[[], Any], errors: list[str], what: str) -> Any:
    """An endpoint the pipeline may not have (404 -> None); other failures are recorded as API errors."""
    try:
        return call()
    except ApiNotFound:
        return None
    except ApiError as exc:
        errors.append(f"{what}: {exc.status} {exc.detail}"[:300])
        return None


def _tasks(client: ApiClient, errors: list[str], **filters: Any) -> dict[str, Any]:
    """A page of tasks as plain JSON ({} when the API did not give it)."""
    return _optional(lambda: client.list_tasks(**filters).model_dump(mode="json"), errors, "tasks") or {}


def read_pipeline_version(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads(REGISTRY["pipeline_version.json"].path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def collect(client: ApiClient, settings: Settings, tailer: LogTailer, source_dir: Path = SOURCE_DIR) -> Snapshot:
    """One snapshot: the API's view of tasks, runners and components, plus this host's version, disk and logs."""
    s = Snapshot(now=utcnow())
    pipeline_version = read_pipeline_version(settings)
    s.running_shas["pipeline"] = (pipeline_version or {}).get("git_sha")
    s.disk_sha = source_sha_on_disk(source_dir)
    s.disk_free_bytes = shutil.disk_usage(settings.logs_dir).free
    s.log_errors = tailer.scan()
    try:
        client.request("GET", "/api/health", retries=0)
    except ApiError as exc:
        s.api_reachable = False
        s.api_errors.append(f"health: {exc.detail}"[:300])
        return s
    errors = s.api_errors
    ready = _optional(lambda: client.request("GET", "/api/ready", retries=0).json(), errors, "ready")
    if ready is not None and not ready.get("ready"):
        errors.append(f"ready: {ready.get('reason')}")
    s.running_shas["api"] = (_optional(lambda: client.get("/api/version"), errors, "version") or {}).get("git_sha")
    # The snapshot is plain JSON (rules and tests read it as such; the report file is written from it).
    s.counts = _optional(lambda: client.count_tasks().model_dump(mode="json"), errors, "tasks/count")
    s.running = _tasks(client, errors, status=TaskStatus.RUNNING, limit=500).get("items", [])
    pending = _tasks(client, errors, status=TaskStatus.PENDING, order="oldest", limit=1)
    s.oldest_pending = next(iter(pending.get("items", [])), None)
    waiting = _tasks(client, errors, status=TaskStatus.NEEDS_DECISION, order="oldest", limit=1)
    s.oldest_decision = next(iter(waiting.get("items", [])), None)
    s.decisions_waiting = waiting.get("total", 0)
    s.runners = (_optional(lambda: client.get("/api/agent/runners"), errors, "runners") or {}).get("items", [])
    s.pipeline = _optional(lambda: client.pipeline_status().model_dump(mode="json"), errors, "pipeline-status")
    s.components = (s.pipeline or {}).get("components") or {}
    s.metrics = _optional(client.task_metrics, errors, "metrics")
    return s


# --- report -------------------------------------------------------------------------------------------------
def build_report(s: Snapshot, issues: list[Issue], open_since: dict[str, str]) -> dict[str, Any]:
    """The layered status report: 0 goal, 1 orchestration, 2 execution, 3 attention; going well / needs attention."""
    manager = s.components.get(MANAGER)
    info = (manager or {}).get("info") or {}
    seen_runners = [r["id"] for r in s.runners if (age_seconds(s.now, r.get("last_seen")) or 1e9) <= 120]
    by_status = (s.counts or {}).get("by_status", {})
    success = (s.pipeline or {}).get("success_24h")
    going_well: list[str] = []
    if s.api_reachable and not s.api_errors:
        going_well.append("API reachable and ready")
    if seen_runners:
        going_well.append(f"{len(seen_runners)} runner(s) seen")
    if s.running:
        going_well.append(f"{len(s.running)} task(s) running")
    if success and success["completed"]:
        going_well.append(f"{success['completed']} task(s) completed in 24 h")
    if info.get("by_status", {}).get("done"):
        going_well.append(f"{info['by_status']['done']} of {info.get('items')} backlog item(s) done")
    if not issues:
        going_well.append("no open issues")
    layers = [
        {"layer": 0, "name": "goal", "backlog": info.get("backlog"), "items": info.get("items"),
         "by_status": info.get("by_status"), "position": info.get("position")},
        {"layer": 1, "name": "orchestration", "api_reachable": s.api_reachable, "api_errors": s.api_errors,
         "running_shas": s.running_shas, "disk_sha": s.disk_sha, "runners_seen": seen_runners,
         "project_manager_seen_seconds": age_seconds(s.now, (manager or {}).get("last_seen"))},
        {"layer": 2, "name": "execution", "by_status": by_status,
         "running": [{"id": t["id"], "task_type": t["task_type"], "claimed_by": t.get("claimed_by"),
                      "elapsed_seconds": age_seconds(s.now, t.get("started_at"))} for t in s.running],
         "success_24h": success},
        {"layer": 3, "name": "attention",
         "issues": [{**asdict(i), "first_seen": open_since.get(i.rule)} for i in issues],
         "api_attention": (s.pipeline or {}).get("attention", [])},
    ]
    return {
        "generated_at": s.now.isoformat(),
        "layers": layers,
        "going_well": going_well,
        "needs_attention": [f"[{i.severity}] {i.rule}: {i.message} -> {i.action} (docs/RUNBOOK.md{i.runbook})"
                            for i in issues],
    }


def render_report(report: dict[str, Any]) -> str:
    goal, orchestration, execution, attention = report["layers"]
    lines = [f"Pipeline status report {report['generated_at']}", ""]
    lines.append(f"0 goal: backlog {goal['backlog'] or '-'}: {goal['items'] or 0} item(s), {goal['by_status'] or {}}")
    lines.append(f"1 orchestration: API {'up' if orchestration['api_reachable'] else 'DOWN'}, runners seen "
                 f"{len(orchestration['runners_seen'])}, code {orchestration['running_shas']} vs disk "
                 f"{orchestration['disk_sha']}")
    lines.append(f"2 execution: {execution['by_status']}, {len(execution['running'])} running")
    lines.append(f"3 attention: {len(attention['issues'])} issue(s)")
    lines += ["", "Going well:"] + [f"  + {g}" for g in report["going_well"] or ["(nothing yet)"]]
    lines += ["", "Needs attention:"] + [f"  ! {n}" for n in report["needs_attention"] or ["(nothing)"]]
    return "\n".join(lines) + "\n"


# --- the monitor loop -----------------------------------------------------------------------------------------
class Monitor:
    """Runs checks; keeps open issues (with first-seen time) in monitor_issues.json, resolutions in a JSONL file."""

    def __init__(self, settings: Settings, client: ApiClient, *, auto_recover: bool | None = None,
                 source_dir: Path = SOURCE_DIR) -> None:
        self.settings = settings
        self.client = client
        self.auto_recover = settings.pipeline_auto_recover if auto_recover is None else auto_recover
        self.source_dir = source_dir
        self.stop = threading.Event()
        self.path = REGISTRY["monitor_issues.json"].path(settings)
        state = self._load()
        self.open: dict[str, dict[str, Any]] = state.get("issues", {})
        self.restarts: dict[str, str] = state.get("restart_requests", {})
        self.tailer = LogTailer(settings.logs_dir, state.get("log_offsets", {}))

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("%s unreadable; starting with no open issues", self.path)
            return {}

    def check(self) -> list[Issue]:
        snapshot = collect(self.client, self.settings, self.tailer, self.source_dir)
        issues = evaluate(snapshot, self.settings)
        now = snapshot.now.isoformat()
        current = {i.rule: i for i in issues}
        for rule, old in self.open.items():
            if rule not in current:
                self._resolve(old, now)
        opened: dict[str, dict[str, Any]] = {}
        for issue in issues:
            first_seen = self.open.get(issue.rule, {}).get("first_seen")
            if first_seen is None:
                log.warning("issue opened: %s [%s] %s -> %s", issue.rule, issue.severity, issue.message, issue.action)
            opened[issue.rule] = {**asdict(issue), "first_seen": first_seen or now, "last_seen": now}
        self.open = opened
        if self.auto_recover:
            self._request_restart(issues, snapshot.now)
        self._save(now)
        report = build_report(snapshot, issues, {rule: i["first_seen"] for rule, i in opened.items()})
        write_json_atomic(REGISTRY["pipeline_status_report.json"].path(self.settings), report)
        text_path = REGISTRY["pipeline_status_report.txt"].path(self.settings)
        text_path.write_text(render_report(report), encoding="utf-8")
        if snapshot.api_reachable:
            self._tell_api(opened)
        by_status = (snapshot.counts or {}).get("by_status", {})
        log.info("STATUS %s api=%s running=%s pending=%s needs_decision=%s issues=%s",
                 "attention" if issues else "ok", "up" if snapshot.api_reachable else "down",
                 by_status.get(TaskStatus.RUNNING, "?"), by_status.get(TaskStatus.PENDING, "?"),
                 by_status.get(TaskStatus.NEEDS_DECISION, "?"),
                 ",".join(current) or "-")
        return issues

    def _resolve(self, issue: dict[str, Any], now: str) -> None:
        first = datetime.fromisoformat(issue["first_seen"])
        entry = {**issue, "resolved_at": now,
                 "open_seconds": round((datetime.fromisoformat(now) - first).total_seconds(), 3)}
        path = REGISTRY["monitor_resolutions.jsonl"].path(self.settings)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
        log.info("issue resolved: %s (open %.0f s)", issue["rule"], entry["open_seconds"])

    def _request_restart(self, issues: list[Issue], now: datetime) -> None:
        """One request at a time, and the same component at most once per cooldown, so restarts never storm."""
        path = REGISTRY["restart_requested.json"].path(self.settings)
        if path.exists():
            return
        for issue in issues:
            if issue.restart is None:
                continue
            last = self.restarts.get(issue.restart)
            if last and (age_seconds(now, last) or 0) < self.settings.monitor_restart_cooldown_seconds:
                continue
            write_json_atomic(path, {"reason": f"{issue.rule}: {issue.message}", "component": issue.restart,
                                     "at": now.isoformat(), "rule": issue.rule})
            self.restarts[issue.restart] = now.isoformat()
            log.warning("auto-recover: restart of %s requested (%s)", issue.restart, issue.rule)
            return

    def _save(self, now: str) -> None:
        write_json_atomic(self.path, {"checked_at": now, "issues": self.open, "restart_requests": self.restarts,
                                      "log_offsets": self.tailer.offsets})

    def _tell_api(self, opened: dict[str, dict[str, Any]]) -> None:
        issues = [{k: v for k, v in i.items() if k not in ("restart", "last_seen")} for i in opened.values()]
        try:
            self.client.post("/api/agent/monitor-issues", {"host": socket.gethostname(), "issues": issues},
                             retries=0)
            self.client.post("/api/agent/components/heartbeat", {
                "component": COMPONENT, "host": socket.gethostname(), "pid": os.getpid(), "version": __version__,
                "info": {"open_issues": sorted(opened), "auto_recover": self.auto_recover}}, retries=0)
        except ApiError as exc:
            log.warning("issues not sent to the API: %s", exc)

    def request_stop(self, signum: int = 0, _frame: object = None) -> None:
        self.stop.set()

    def run(self, interval: float, once: bool) -> int:
        """Check every ``interval`` seconds until stopped; with ``once``, one check: exit 1 when issues are open."""
        while True:
            issues: list[Issue] | None = None
            try:
                issues = self.check()
            except Exception:  # a bad check must not end the monitor; the next one may succeed
                log.exception("check failed")
            if once:
                return 0 if issues == [] else 1
            if self.stop.wait(interval):
                return 0
