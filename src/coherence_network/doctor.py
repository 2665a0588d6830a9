"""`coherence doctor`: is the pipeline effective? Each check is OK, a warning, or names the action (a command to run
and the runbook section); exit 1 when anything needs action. Flags and monitor issues are graded as every view grades
them (grading.GRADES): critical and high need action, medium is a warning, low only shown. Doctor is a one-shot
command: it reads, and never registers as a component."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coherence_network import fatal, grading, health
from coherence_network.agents import CUSTOM, PRESETS
from coherence_network.client import ApiClient, ApiError
from coherence_network.contract import Component
from coherence_network.endpoints import EFFECTIVENESS, HEALTH, READY, TASK_METRICS, Endpoint
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
    warn: bool = False  # ok, but worth a look (a medium flag, no runner alive while there is no work...)


def _check_api(call: Callable[[], Any], endpoint: Endpoint, name: str, command: str,
               runbook: str) -> tuple[Check, Any]:
    """One read of the API (``call``, a typed client method of ``endpoint``) as a check, tried once."""
    try:
        body = call()
    except ApiError as exc:
        return Check(name, False, f"{endpoint}: {exc.status} {exc.detail}"[:300], command, runbook), None
    return Check(name, True, f"{endpoint} answers"), body


def _alive(name: str, rows: list[dict[str, Any]], command: str) -> Check:
    """Who is alive, as the API judged it (pipeline-status: alive, stopped, dead). Not an action by itself: the health
    rules say when a missing component matters (no_runner with work waiting, manager_stale with items unsettled)."""
    if not rows:
        return Check(name, True, "never seen", command, "#pipeline-recovery", warn=True)
    summary = grading.count_states(rows)
    if any(grading.state_of(r) == grading.ALIVE for r in rows):
        return Check(name, True, summary)
    return Check(name, True, summary, command, "#pipeline-recovery", warn=True)


def _graded(name: str, flags: list[dict[str, Any]], none: str) -> Check:
    """Flags graded as everywhere (grading.GRADES): any critical or high is an action, a medium one a warning, a low
    one only shown. The command is the most serious flag's (pipeline-status lists them most serious first)."""
    if not flags:
        return Check(name, True, none)
    detail = "; ".join(f"[{f['severity']}] {f['rule']}: {f['message']}" for f in flags)[:500]
    first = flags[0]
    if grading.needs_attention(flags):
        return Check(name, False, detail, first["command"], first["runbook"])
    if grading.grade(first["severity"]).health < 1.0:  # a medium one
        return Check(name, True, detail, first["command"], first["runbook"], warn=True)
    return Check(name, True, detail)


def diagnose(settings: Settings, client: ApiClient) -> tuple[list[Check], dict[str, Any] | None]:
    """Every check, and the effectiveness figures when the API gave them."""
    checks: list[Check] = []
    start_api = "make run   (the whole pipeline, as the README starts it; only the API: coherence api)"
    reachable, _ = _check_api(lambda: client.health(retries=0), HEALTH, "api_reachable", start_api, "#api-restart")
    checks.append(reachable)
    effectiveness = None
    if reachable.ok:
        ready, _ = _check_api(lambda: client.ready(retries=0), READY, "api_ready",
                              "coherence migrate   (when migrations are behind; the cause: coherence logs api)",
                              "#api-restart")
        checks.append(ready)
        _api_part(client, checks)
        check, effectiveness = _check_api(lambda: client.effectiveness(retries=0), EFFECTIVENESS, "effectiveness",
                                          "coherence logs api", "#pipeline-effectiveness")
        checks.append(check)
    checks.append(_version_check(settings, client if reachable.ok else None))
    checks.append(agent_check(settings))
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
    """Checks that need an answering API: endpoints, health, who is alive. Whether writes succeed is /api/ready's
    store_writable (the api_ready check, and the rule store_not_ready): doctor writes nothing."""
    metrics, _ = _check_api(lambda: client.task_metrics(retries=0), TASK_METRICS, "metrics", "coherence logs api",
                            "#key-endpoints")
    checks.append(metrics)
    try:
        status = client.pipeline_status().model_dump(mode="json")
    except ApiError as exc:
        checks.append(Check("health", False, f"GET /api/agent/pipeline-status: {exc}"[:300], "coherence logs api",
                            "#api-restart"))
        return
    # one list, graded once: the health rules' flags, then the monitors' facts of their hosts
    flags = status["attention"]
    rules = [f for f in flags if not health.from_monitor(f)]
    checks.append(_graded("health", rules, "no attention flags"))
    host = [f for f in flags if health.from_monitor(f)]
    checks.append(_graded("monitor_issues", host, "none open"))
    components = status["components"]
    checks.append(_alive("runner_seen", status["runners"], "coherence runner   (the whole pipeline: make run)"))
    checks.append(_alive("manager_seen", [components[Component.MANAGER]] if Component.MANAGER in components else [],
                         "coherence pm --backlog backlog.md   (the whole pipeline: make run)"))
    checks.append(_alive("monitor_seen", [components[Component.MONITOR]] if Component.MONITOR in components else [],
                         "coherence monitor   (the whole pipeline: make run)"))


def _version_check(settings: Settings, client: ApiClient | None) -> Check:
    disk = source_sha_on_disk()
    running = {"pipeline": (read_pipeline_version(settings) or {}).get("git_sha")}
    if client is not None:
        try:
            running[Component.API] = client.version().git_sha
        except ApiError:
            pass
    stale = {who: sha for who, sha in running.items() if sha and disk and sha != disk}
    if stale and disk:
        return Check("version", False, f"running {_shas(stale)} differs from the source on disk {disk[:12]}",
                     "coherence restart all", "#autonomous-pipeline")
    known = {who: sha for who, sha in running.items() if sha}
    return Check("version", True, f"running {_shas(known) if known else 'unknown'}; source on disk "
                 f"{(disk or 'unknown')[:12]}")


def agent_check(settings: Settings) -> Check:
    """Every agent some task type runs (COHERENCE_AGENT and the phases' own) is installed here: found on this
    process's PATH, as a runner started the same way finds it; when one is missing, how to install it."""
    found, missing, install = [], [], []
    for agent, types in settings.agents_configured.items():
        phases = "/".join(types)
        if agent == CUSTOM:
            try:
                words = shlex.split(settings.coherence_agent_command)
            except ValueError as exc:
                missing.append(f"{phases}: custom, COHERENCE_AGENT_COMMAND cannot be split: {exc}")
                install.append("fix the quoting of COHERENCE_AGENT_COMMAND")
                continue
            if not words:
                found.append(f"{phases}: custom, COHERENCE_AGENT_COMMAND not set (only run tasks can run)")
            elif shutil.which(words[0]):
                found.append(f"{phases}: custom, {words[0]} at {shutil.which(words[0])}")
            else:
                missing.append(f"{phases}: custom, {words[0]} (COHERENCE_AGENT_COMMAND) not found")
                install.append(f"install {words[0]} or fix COHERENCE_AGENT_COMMAND")
            continue
        preset = PRESETS[agent]
        where = shutil.which(preset.executable)
        if where:
            found.append(f"{phases}: {agent} at {where}")
        else:
            missing.append(f"{phases}: {agent} not installed ({preset.executable} is not on PATH)")
            install.append(preset.install)
    detail = "; ".join(missing + found)
    if missing:
        return Check("agent", False, detail, "; ".join(install), "#coding-agents")
    return Check("agent", True, detail)


def _shas(by_who: dict[str, str]) -> str:
    """"pipeline 1a2b3c4d5e6f, api 1a2b3c4d5e6f": a line for people, not a Python dict."""
    return ", ".join(f"{who} {sha[:12]}" for who, sha in by_who.items())


def render(checks: list[Check], effectiveness: dict[str, Any] | None) -> str:
    lines = []
    for check in checks:
        if check.ok and check.warn:
            lines.append(f"[WARN]   {check.name}: {check.detail}")
            if check.command:
                lines.append(f"         run: {check.command}")
        elif check.ok:
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
                  (f"  completed in 7 d: {effectiveness['throughput']['completed_7d']}, success rate 7 d: "
                  f"{'-' if rate is None else f'{rate:.0%}'}"),
                  (f"  issues: {effectiveness['issues']['open']} open, {effectiveness['issues']['resolved']} resolved "
                  f"in 7 d, {effectiveness['issues']['fatal']} fatal"),
                  f"  backlog: {backlog['done']} of {backlog['items']} done" if backlog else "  backlog: unknown"]
    actions = sum(1 for c in checks if not c.ok)
    warnings = sum(1 for c in checks if c.ok and c.warn)
    verdict = f"{actions} check(s) need action" if actions else "all checks OK"
    lines += ["", verdict + (f", {warnings} warning(s)" if warnings else "")]
    return "\n".join(lines)
