"""`coherence doctor` against a healthy and a broken pipeline: exit codes and the actions it names."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx

from coherence_network.logfiles import write_json_atomic
from coherence_network.versioning import running_version
from tests.support.api import ServedApi


def doctor(api: ServedApi) -> tuple[int, dict[str, object], str]:
    env = {**os.environ, "COHERENCE_HOME": str(api.home), "AGENT_API_BASE": api.url, "MONITOR_DISK_MIN_FREE_MB": "1"}
    run = [sys.executable, "-m", "coherence_network.cli", "doctor"]
    as_json = subprocess.run([*run, "--json"], env=env, capture_output=True, text=True, timeout=60)
    text = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == text.returncode
    return as_json.returncode, json.loads(as_json.stdout), text.stdout


def seen(api: ServedApi) -> None:
    """What a running pipeline does: a runner, the project manager and the monitor send heartbeats."""
    host, pid = socket.gethostname(), os.getpid()
    httpx.post(f"{api.url}/api/agent/runners/heartbeat",
               json={"runner_id": "h:1", "host": host, "pid": pid, "version": "t"}).raise_for_status()
    for component, info in (("project_manager", {"items": 2, "by_status": {"done": 1, "in_progress": 1}}),
                            ("monitor", {"open_issues": []})):
        httpx.post(f"{api.url}/api/agent/components/heartbeat",
                   json={"component": component, "host": host, "pid": pid, "info": info}).raise_for_status()


def test_healthy_pipeline(served_api: ServedApi) -> None:
    seen(served_api)
    # a row an older doctor left (it registered itself, and turned red 5 minutes later): not judged, not shown
    httpx.post(f"{served_api.url}/api/agent/components/heartbeat",
               json={"component": "doctor", "host": "h", "pid": 1}).raise_for_status()
    write_json_atomic(served_api.home / "logs" / "pipeline_version.json", running_version())
    code, report, text = doctor(served_api)
    assert code == 0, text
    names = {c["name"] for c in report["checks"]}  # type: ignore[union-attr]
    assert {"api_reachable", "api_ready", "metrics", "monitor_issues", "effectiveness", "version", "runner_seen",
            "manager_seen", "monitor_seen", "disk_space", "fatal_issues"} <= names
    assert "[ACTION]" not in text and "all checks OK" in text and "goal proximity" in text
    assert report["effectiveness"]["backlog"]["done"] == 1  # type: ignore[index]
    sha = running_version()["git_sha"][:12]
    assert f"[OK]     version: running pipeline {sha}, api {sha}; source on disk {sha}" in text  # not a dict
    assert "{" not in text
    # doctor is a one-shot command: it reads, and leaves no component behind to turn red later
    components = httpx.get(f"{served_api.url}/api/agent/pipeline-status").json()["components"]
    assert set(components) == {"project_manager", "monitor"}


def test_broken_pipeline_names_the_actions(served_api: ServedApi) -> None:
    write_json_atomic(served_api.home / "logs" / "fatal_issues.json", [{
        "at": "2026-01-01T00:00:00+00:00", "component": "agent_runner", "reason": "exited 5 times within 300 s",
        "detail": "boom", "recovery_tried": "4 restarts"}])
    code, report, text = doctor(served_api)
    assert code == 1
    actions = {c["name"]: c for c in report["checks"] if not c["ok"]}  # type: ignore[union-attr]
    assert set(actions) == {"fatal_issues"}
    warnings = {c["name"] for c in report["checks"] if c["warn"]}  # type: ignore[union-attr]
    assert warnings == {"runner_seen", "manager_seen", "monitor_seen"}  # no work waits: the rules flag nothing
    assert "[WARN]   runner_seen: never seen" in text
    assert "coherence fatal" in actions["fatal_issues"]["command"]
    assert "[ACTION] fatal_issues" in text and "docs/RUNBOOK.md#autonomous-pipeline" in text

    served_api.stop()
    code, report, text = doctor(served_api)
    assert code == 1
    actions = {c["name"]: c for c in report["checks"] if not c["ok"]}  # type: ignore[union-attr]
    assert actions["api_reachable"]["command"].startswith("make run")  # as the README starts the pipeline
    assert actions["api_reachable"]["runbook"] == "#api-restart" and "run: make run" in text
