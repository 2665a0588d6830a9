"""`coherence doctor`: is the pipeline effective? Each check is OK or names the action (a command to run and the
runbook section); exit 1 when anything needs action."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from typing import Any

from coherence_network import __version__, fatal, health
from coherence_network.client import ApiClient, ApiError
from coherence_network.monitor import COMPONENT as MONITOR
from coherence_network.monitor import read_pipeline_version
from coherence_network.settings import Settings
from coherence_network.versioning import source_sha_on_disk


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    command: str = ""
    runbook: str = ""


def _check_api(client: ApiClient, name: str, path: str, command: str, runbook: str) -> tuple[Check, Any]:
    try:
        body = client.request("GET", path, retries=0).json()
    except ApiError as exc:
        return Check(name, False, f"GET {path}: {exc.status} {exc.detail}"[:300], command, runbook), None
    return Check(name, True, f"GET {path} answers"), body


def _seen(name: str, row: dict[str, Any] | None, setting: str, command: str) -> Check:
    """Seen or not as the API judged it (pipeline-status, by its ``setting``): the same answer every view gives."""
    if row is None:
        return Check(name, False, "never seen", command, "#pipeline-recovery")
    if not row["seen"]:
        return Check(name, False, f"last seen {row['last_seen_seconds']:.0f} s ago (limit {setting})", command,
                     "#pipeline-recovery")
    return Check(name, True, f"seen {row['last_seen_seconds']:.0f} s ago")


def _health(flags: list[dict[str, Any]]) -> Check:
    """The health rules the API evaluated: any open flag (a decision waiting included) needs a person."""
    if not flags:
        return Check("health", True, "no attention flags")
    first = flags[0]
    return Check("health", False, "; ".join(f"[{f['severity']}] {f['code']}: {f['message']}" for f in flags)[:500],
                 first["action"], first["runbook"])


def diagnose(settings: Settings, client: ApiClient) -> tuple[list[Check], dict[str, Any] | None]:
    """Every check, and the effectiveness figures when the API gave them."""
    checks: list[Check] = []
    start_api = "coherence supervise   (or only the API: coherence api)"
    reachable, _ = _check_api(client, "api_reachable", "/api/health", start_api, "#api-restart")
    checks.append(reachable)
    effectiveness = None
    if reachable.ok:
        ready, _ = _check_api(client, "api_ready", "/api/ready", "coherence migrate; then read var/logs/api.log",
                              "#api-restart")
        checks.append(ready)
        _api_part(client, checks)
        check, effectiveness = _check_api(client, "effectiveness", "/api/agent/effectiveness",
                                          "read var/logs/api.log", "#pipeline-effectiveness")
        checks.append(check)
    checks.append(_version_check(settings, client if reachable.ok else None))
    free = shutil.disk_usage(settings.logs_dir).free
    minimum = settings.monitor_disk_min_free_mb * 2**20
    checks.append(Check("disk_space", free >= minimum, f"{free / 2**20:.0f} MiB free under {settings.logs_dir}",
                        "" if free >= minimum else "coherence cleanup --days 3", "#tests-and-cleanup"))
    issues, api_error = fatal.gather(settings, client if reachable.ok else None)
    checks.append(Check(
        "fatal_issues", not issues,
        (f"{len(issues)} fatal issue(s): " + "; ".join(f"{i['component']}: {i['reason']}" for i in issues))
        if issues else ("none" + (f" here ({api_error})" if api_error and reachable.ok else "")),
        "coherence fatal   (fix the cause, then: coherence fatal --clear)", "#autonomous-pipeline"))
    return checks, effectiveness


def _api_part(client: ApiClient, checks: list[Check]) -> None:
    """Checks that need an answering API: endpoints, health, components seen, a write through the API."""
    metrics, _ = _check_api(client, "metrics", "/api/agent/metrics", "read var/logs/api.log", "#key-endpoints")
    checks.append(metrics)
    issues_check, issues = _check_api(client, "monitor_issues", "/api/agent/monitor-issues", "coherence monitor "
                                      "--once", "#pipeline-recovery")
    if issues is not None:
        # health rules are judged live below; here only what the monitor saw on its host
        serious = [i for i in issues["issues"]
                   if i["severity"] in ("critical", "high") and i["rule"] not in health.BY_CODE]
        if serious:
            first = serious[0]
            issues_check = Check("monitor_issues", False,
                                 "; ".join(f"{i['rule']}: {i['message']}" for i in serious)[:500], first["action"],
                                 first["runbook"])
        else:
            issues_check.detail = f"{len(issues['issues'])} open issue(s), none serious"
    checks.append(issues_check)
    try:
        status = client.pipeline_status().model_dump(mode="json")
    except ApiError as exc:
        checks.append(Check("health", False, f"GET /api/agent/pipeline-status: {exc}"[:300], "read "
                            "var/logs/api.log", "#api-restart"))
        return
    checks.append(_health(status["attention"]))
    newest = next(iter(status["runners"]), None)  # newest first
    components = status["components"]
    runner_limit, component_limit = "MONITOR_RUNNER_SEEN_SECONDS", "MONITOR_COMPONENT_SEEN_SECONDS"
    checks.append(_seen("runner_seen", newest, runner_limit, "coherence supervise   (or: coherence runner)"))
    checks.append(_seen("manager_seen", components.get(health.MANAGER), component_limit,
                        "coherence supervise --backlog backlog.md   (or: coherence pm --backlog backlog.md)"))
    checks.append(_seen("monitor_seen", components.get(MONITOR), component_limit,
                        "coherence supervise   (or: coherence monitor)"))
    try:
        client.post("/api/agent/components/heartbeat", {"component": "doctor", "host": socket.gethostname(),
                                                         "pid": os.getpid(), "version": __version__}, retries=0)
        checks.append(Check("database_writable", True, "a write through the API succeeded"))
    except ApiError as exc:
        checks.append(Check("database_writable", False, f"a write through the API failed: {exc.detail}"[:300],
                            "check the store (DATABASE_URL, disk, permissions); read var/logs/api.log",
                            "#api-restart"))


def _version_check(settings: Settings, client: ApiClient | None) -> Check:
    disk = source_sha_on_disk()
    running = {"pipeline": (read_pipeline_version(settings) or {}).get("git_sha")}
    if client is not None:
        try:
            running["api"] = client.get("/api/version").get("git_sha")
        except ApiError:
            pass
    stale = {who: sha for who, sha in running.items() if sha and disk and sha != disk}
    if stale:
        return Check("version", False, f"running {stale} differs from the source on disk {disk}",
                     "coherence stop && scripts/run_autonomous.sh", "#autonomous-pipeline")
    known = {who: sha[:12] for who, sha in running.items() if sha}
    return Check("version", True, f"running {known or 'unknown'} = disk {(disk or 'unknown')[:12]}")


def render(checks: list[Check], effectiveness: dict[str, Any] | None) -> str:
    lines = []
    for check in checks:
        if check.ok:
            lines.append(f"[OK]     {check.name}: {check.detail}")
        else:
            lines.append(f"[ACTION] {check.name}: {check.detail}")
            lines.append(f"         run: {check.command}")
            lines.append(f"         see: docs/RUNBOOK.md{check.runbook}")
    if effectiveness:
        goal = effectiveness["goal_proximity"]
        rate = effectiveness["success_rate_7d"]
        backlog = effectiveness["backlog"]
        lines += ["", "Effectiveness:",
                  f"  goal proximity {goal['value']:.2f} ({goal['formula']})",
                  f"  completed in 7 d: {effectiveness['throughput']['completed_7d']}, success rate 7 d: "
                  f"{'-' if rate is None else f'{rate:.0%}'}",
                  f"  issues: {effectiveness['issues']['open']} open, {effectiveness['issues']['resolved']} resolved "
                  f"in 7 d, {effectiveness['issues']['fatal']} fatal",
                  f"  backlog: {backlog['done']} of {backlog['items']} done" if backlog else "  backlog: unknown"]
    actions = sum(1 for c in checks if not c.ok)
    lines += ["", f"{actions} check(s) need action" if actions else "all checks OK"]
    return "\n".join(lines)
