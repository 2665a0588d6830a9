"""`coherence monitor --once` against a real API: issues opened and resolved, files, API, auto-recover; and the
version rule against a temporary git repository (auto-commits in the workspace never look like new code)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from coherence_network import gitops
from coherence_network.clock import utcnow
from coherence_network.contract import Task
from coherence_network.monitor import Snapshot, evaluate
from coherence_network.settings import Settings
from coherence_network.versioning import SOURCE_DIR, source_sha_on_disk
from tests.support.api import ServedApi


def monitor_once(api: ServedApi, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COHERENCE_HOME": str(api.home), "AGENT_API_BASE": api.url, "MONITOR_DISK_MIN_FREE_MB": "1",
            **env}
    return subprocess.run([sys.executable, "-m", "coherence_network.cli", "monitor", "--once"], env=full,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.long
def test_issue_opened_reported_and_resolved(served_api: ServedApi) -> None:
    api, logs = served_api, served_api.home / "logs"
    httpx.post(f"{api.url}/api/agent/tasks", json={"direction": "d", "task_type": "run", "command": "true"})
    (logs / "agent_runner.log").write_text("2026-01-01T00:00:00Z INFO x: start\n")

    first = monitor_once(api, PIPELINE_AUTO_RECOVER="1")
    assert first.returncode == 1, first.stderr
    issues = json.loads((logs / "monitor_issues.json").read_text())["issues"]
    assert set(issues) == {"no_runner"}
    assert issues["no_runner"]["runbook"] == "#pipeline-recovery"
    request = json.loads((logs / "restart_requested.json").read_text())
    assert request["component"] == "agent_runner" and request["reason"].startswith("no_runner")
    served = httpx.get(f"{api.url}/api/agent/monitor-issues").json()
    assert served["issues"] == []  # a health rule's flag: pipeline-status has it live, not a second copy here
    report = json.loads((logs / "pipeline_status_report.json").read_text())
    assert report["layers"][3]["issues"][0]["rule"] == "no_runner"
    assert "Needs attention" in (logs / "pipeline_status_report.txt").read_text()
    assert "STATUS attention" in (logs / "monitor.log").read_text()

    httpx.post(f"{api.url}/api/agent/runners/heartbeat",
               json={"runner_id": "h:1", "host": "h", "pid": 1, "version": "t"})
    with (logs / "agent_runner.log").open("a") as handle:
        handle.write("2026-01-01T00:00:01Z ERROR coherence.runner: boom\n")
    second = monitor_once(api)
    assert second.returncode == 0  # log_errors is low: shown, not a call for attention
    issues = json.loads((logs / "monitor_issues.json").read_text())["issues"]
    assert set(issues) == {"log_errors"} and "boom" in issues["log_errors"]["detail"]["sample"][0]
    served = httpx.get(f"{api.url}/api/agent/monitor-issues").json()
    assert [(i["rule"], i["command"]) for i in served["issues"]] == [("log_errors", "coherence logs api")]
    resolved = [json.loads(line) for line in (logs / "monitor_resolutions.jsonl").read_text().splitlines()]
    assert [r["rule"] for r in resolved] == ["no_runner"] and resolved[0]["resolved_at"]

    assert monitor_once(api).returncode == 0  # no new ERROR line: everything clear
    served = httpx.get(f"{api.url}/api/agent/monitor-issues").json()
    assert served["count"] == 0 and {i["rule"] for i in served["recently_resolved"]} == {"log_errors"}
    effect = httpx.get(f"{api.url}/api/agent/effectiveness").json()
    assert effect["issues"]["open"] == 0 and effect["issues"]["resolved"] == 1
    assert 0 <= effect["goal_proximity"]["value"] <= 1


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_auto_commit_is_not_stale_version_but_a_source_change_is(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    package = repo / "src" / "coherence_network"
    shutil.copytree(SOURCE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "work").mkdir()
    (repo / "work" / "notes.md").write_text("start\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "empty")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "initial")
    started_with = source_sha_on_disk(package)
    assert started_with == _git(repo, "rev-parse", "HEAD")

    settings = Settings(_env_file=None, coherence_home=tmp_path / "home", coherence_workspace=repo / "work",
                        pipeline_auto_commit=True)
    (repo / "work" / "notes.md").write_text("changed by a task\n")
    now = datetime.now(UTC)
    task = Task(id=5, task_type="impl", status="completed", direction="Change the notes", created_at=now,
                updated_at=now)
    assert gitops.commit_workspace(settings, [task]) == "committed"
    assert _git(repo, "log", "-1", "--format=%s") == "[pipeline] impl 5: Change the notes"

    def stale_after() -> bool:
        snapshot = Snapshot(now=utcnow(), running_shas={"pipeline": started_with},
                            disk_sha=source_sha_on_disk(package))
        return any(i.rule == "stale_version" for i in evaluate(snapshot, settings))

    assert not stale_after()
    (package / "monitor.py").write_text((package / "monitor.py").read_text() + "\n# changed\n")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "source change")
    assert stale_after()
