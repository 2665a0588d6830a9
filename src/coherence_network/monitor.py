"""Monitor: fetch a snapshot of the pipeline, keep issues, write the layered status report.

The pipeline's health is decided once, by the API (coherence_network.health, read here from pipeline-status's
`attention`); the monitor's own rules cover only facts of its host: the API answering, disk, local log errors, the
version on disk. Host rules are pure functions of (Snapshot, Settings), so each one is unit-tested without servers.
Each issue names its severity, the action an operator (or auto-recovery) takes, and the runbook section. With
PIPELINE_AUTO_RECOVER the monitor asks the supervisor for a restart (var/logs/restart_requested.json) when the
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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from coherence_network import __version__, grading, health
from coherence_network.client import ApiClient, ApiError, ApiNotFound
from coherence_network.clock import utcnow
from coherence_network.contract import Component, Severity, TaskStatus
from coherence_network.file_retention import append_line, trim_resolutions
from coherence_network.logfiles import REGISTRY, write_json_atomic
from coherence_network.monitor_report import build_report, render_report
from coherence_network.settings import Settings
from coherence_network.versioning import SOURCE_DIR, source_sha_on_disk

log = logging.getLogger("coherence.monitor")

COMPONENT = Component.MONITOR
_ERROR_LINE = re.compile(r'^\S+ (ERROR|CRITICAL) |"level": "(ERROR|CRITICAL)"')
_SAMPLE_LINES = 5



def age_seconds(now: datetime, when: str | datetime | None) -> float | None:
    """Seconds since an API timestamp (ISO text) or datetime; None when absent."""
    if when is None:
        return None
    moment = datetime.fromisoformat(when) if isinstance(when, str) else when
    return (now - moment).total_seconds()


# --- snapshot -----------------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """Everything the monitor looks at, gathered once per check: the API's pipeline-status (with the health flags
    the API evaluated) plus local facts of this host."""

    now: datetime
    api_reachable: bool = True
    api_errors: list[str] = field(default_factory=list)
    pipeline: dict[str, Any] | None = None  # pipeline-status as plain JSON
    running_shas: dict[str, str | None] = field(default_factory=dict)  # who runs which code: "pipeline", "api"
    disk_sha: str | None = None
    disk_free_bytes: int | None = None
    log_errors: dict[str, list[str]] = field(default_factory=dict)  # log file -> new ERROR lines

    def part(self, name: str) -> Any:
        """A section of pipeline-status ({} when the API did not give it)."""
        return (self.pipeline or {}).get(name) or {}


@dataclass
class Issue:
    rule: str
    severity: str
    message: str
    action: str
    runbook: str
    detail: dict[str, Any] = field(default_factory=dict)
    restart: str | None = None  # the component a restart would fix, for auto-recovery
    command: str = ""  # pasteable: a `coherence ...` line (or `make run`, the README's start)
    console: str | None = None  # the console page whose button does it


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    condition: str
    action: str
    runbook: str
    check: Callable[[Snapshot, Settings], tuple[str, dict[str, Any], str | None] | None]
    command: str
    console: str | None = None

    def evaluate(self, snapshot: Snapshot, settings: Settings) -> Issue | None:
        found = self.check(snapshot, settings)
        if found is None:
            return None
        message, detail, restart = found
        return Issue(self.name, self.severity, message, self.action, self.runbook, detail, restart, self.command,
                     self.console)


Finding = tuple[str, dict[str, Any], str | None] | None


def _api_unreachable(s: Snapshot, _: Settings) -> Finding:
    if s.api_reachable:
        return None
    return "the API does not answer", {"errors": s.api_errors}, Component.API


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


def _disk_low(s: Snapshot, cfg: Settings) -> Finding:
    limit = cfg.monitor_disk_min_free_mb * 1024 * 1024
    if s.disk_free_bytes is None or s.disk_free_bytes >= limit:
        return None
    return (f"{s.disk_free_bytes / 2**20:.0f} MiB free under the log folder (minimum "
        f"{cfg.monitor_disk_min_free_mb:.0f} MiB)"), {"free_bytes": s.disk_free_bytes}, None


def _log_errors(s: Snapshot, _: Settings) -> Finding:
    if not s.log_errors:
        return None
    counts = {name: len(lines) for name, lines in s.log_errors.items()}
    sample = [line for lines in s.log_errors.values() for line in lines][-_SAMPLE_LINES:]
    return f"{sum(counts.values())} new ERROR line(s) in {', '.join(sorted(counts))}", \
        {"by_file": counts, "sample": sample}, None


RULES: tuple[Rule, ...] = (
    Rule("api_unreachable", Severity.CRITICAL, "GET /api/health fails", "start the pipeline (the README's make run, "
         "which is coherence supervise), or only the API (coherence api); see var/logs/api.log", "#api-restart",
         _api_unreachable, "make run"),
    Rule("api_error", Severity.HIGH, "the API answers but an endpoint fails", "read var/logs/api.log (store reachable? "
         "migrations current: coherence migrate)", "#api-restart", _api_error, "coherence doctor"),
    Rule("stale_version", Severity.MEDIUM, "running code differs from the package source on disk",
         "restart the pipeline on the new code", "#autonomous-pipeline", _stale_version, "coherence restart all",
         "/#restart"),
    Rule("disk_low", Severity.HIGH, "free space under var/logs below MONITOR_DISK_MIN_FREE_MB",
         "free space: remove old task logs", "#tests-and-cleanup", _disk_low, "coherence cleanup --days 3"),
    Rule("log_errors", Severity.LOW, "new ERROR lines in component logs since the last check",
         "read the lines named in the issue's detail", "#log-locations", _log_errors, "coherence logs api"),
)
BY_NAME = {rule.name: rule for rule in RULES}


def with_command(issue: dict[str, Any]) -> dict[str, Any]:
    """A stored monitor issue with its rule's pasteable command and console page (kept with the rules, not stored:
    an older row gets them too)."""
    rule = BY_NAME.get(issue["rule"])
    return {**issue, "command": rule.command if rule else "coherence doctor", "console": rule.console if rule else None}


def evaluate(snapshot: Snapshot, settings: Settings) -> list[Issue]:
    """The issues open now: this host's rules, then the health flags the API evaluated (the same ones doctor,
    status, /metrics and Telegram show)."""
    issues = [issue for rule in RULES if (issue := rule.evaluate(snapshot, settings)) is not None]
    for flag in snapshot.part("attention") or []:
        if health.from_monitor(flag):  # a monitor's own fact coming back: this host's rules above judge it
            continue
        rule = health.BY_NAME.get(flag["rule"])
        issues.append(Issue(flag["rule"], flag["severity"], flag["message"], flag["action"], flag["runbook"],
                            {"task_ids": flag["task_ids"]} if flag["task_ids"] else {},
                            rule.restart if rule else None, flag.get("command", ""), flag.get("console")))
    return issues


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
        client.health(retries=0)
    except ApiError as exc:
        s.api_reachable = False
        s.api_errors.append(f"health: {exc.detail}"[:300])
        return s
    errors = s.api_errors  # a replica that is not ready says so in pipeline-status (the rule store_not_ready)
    version = _optional(client.version, errors, "version")
    s.running_shas[Component.API] = version.git_sha if version else None
    # The snapshot is plain JSON (tests read it as such; the report file is written from it).
    s.pipeline = _optional(lambda: client.pipeline_status().model_dump(mode="json"), errors, "pipeline-status")
    return s


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
        self.resolutions_trimmed: float | None = None  # monotonic time of the last retention trim

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("%s unreadable; starting with no open issues", self.path)
            return {}

    def check(self, once: bool = False) -> list[Issue]:
        """One check; with ``once`` (a one-shot command) the monitor does not register as a running component."""
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
            self._tell_api(opened, once)
        by_status = snapshot.part("counts").get("by_status", {})
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
        append_line(REGISTRY["monitor_resolutions.jsonl"].path(self.settings), json.dumps(entry, default=str))
        log.info("issue resolved: %s (open %.0f s)", issue["rule"], entry["open_seconds"])
        # The file grows only here, so retention is applied here: at most once per COHERENCE_PRUNE_INTERVAL_SECONDS.
        due = self.resolutions_trimmed is None or (
            time.monotonic() - self.resolutions_trimmed >= self.settings.coherence_prune_interval_seconds)
        if due:
            self.resolutions_trimmed = time.monotonic()
            try:
                trim_resolutions(self.settings)
            except OSError as exc:  # retention must not cost the check; the next resolution tries again
                log.warning("monitor resolutions not trimmed: %s", exc)

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

    def _tell_api(self, opened: dict[str, dict[str, Any]], once: bool) -> None:
        """Post the facts of this host (the health rules' flags are the API's own, shown live: not twice) and, when
        running as a component, the heartbeat."""
        issues = [{k: v for k, v in i.items() if k not in ("restart", "last_seen", "command", "console")}
                  for i in opened.values() if i["rule"] not in health.BY_NAME]
        try:
            self.client.report_monitor_issues(socket.gethostname(), issues)
            if not once:
                self._heartbeat({"open_issues": sorted(opened), "auto_recover": self.auto_recover})
        except ApiError as exc:
            log.warning("issues not sent to the API: %s", exc)

    def _heartbeat(self, info: dict[str, Any]) -> None:
        self.client.component_heartbeat(COMPONENT, socket.gethostname(), os.getpid(), __version__, info)

    def request_stop(self, signum: int = 0, _frame: object = None) -> None:
        self.stop.set()

    def run(self, interval: float, once: bool) -> int:
        """Check every ``interval`` seconds until stopped; with ``once``, one check: exit 1 when an issue open needs
        attention (critical or high, grading.GRADES)."""
        while True:
            issues: list[Issue] | None = None
            try:
                issues = self.check(once)
            except Exception:  # a bad check must not end the monitor; the next one may succeed
                log.exception("check failed")
            if once:
                return 1 if issues is None or grading.needs_attention(asdict(i) for i in issues) else 0
            if self.stop.wait(interval):
                try:  # the last heartbeat: stopped, not dead
                    self._heartbeat({"open_issues": sorted(self.open), "stopped": "stopped by signal"})
                except ApiError as exc:
                    log.warning("could not tell the API the monitor stopped: %s", exc)
                return 0
