"""Monitor rules as pure functions over a snapshot; the log tailer; the report; the goal proximity formula."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from coherence_network.api.routes_ops_issues import goal_proximity
from coherence_network.contract import Task
from coherence_network.gitops import commit_message
from coherence_network.monitor import RULES, LogTailer, Snapshot, build_report, evaluate, render_report
from coherence_network.settings import Settings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).isoformat()


@pytest.fixture
def cfg() -> Settings:
    return Settings(_env_file=None)


def healthy(**changes: object) -> Snapshot:
    snapshot = Snapshot(
        now=NOW, counts={"total": 3, "by_status": {"pending": 0, "running": 1, "completed": 2}},
        running=[{"id": 3, "task_type": "run", "started_at": ago(10), "lease_expires_at": ago(-50),
                  "timeout_seconds": None}],
        runners=[{"id": "h:1", "last_seen": ago(5)}],
        components={"project_manager": {"last_seen": ago(5), "info": {"by_status": {"in_progress": 1}}}},
        pipeline={"recent": [{"id": 2, "status": "completed", "task_type": "impl", "output_chars": 10}],
                  "success_24h": {"completed": 2, "failed": 0, "success_rate": 1.0}},
        running_shas={"pipeline": "a" * 40, "api": "a" * 40}, disk_sha="a" * 40, disk_free_bytes=10 * 2**30,
    )
    for key, value in changes.items():
        setattr(snapshot, key, value)
    return snapshot


def rules(snapshot: Snapshot, cfg: Settings) -> dict[str, object]:
    return {issue.rule: issue for issue in evaluate(snapshot, cfg)}


def test_every_rule_names_severity_action_and_runbook() -> None:
    assert {r.name for r in RULES} == {
        "api_unreachable", "api_error", "stale_version", "runner_not_seen", "manager_not_seen", "no_task_running",
        "orphan_running", "needs_decision_waiting", "repeated_failures", "low_success_rate", "output_empty",
        "disk_low", "log_errors"}
    for rule in RULES:
        assert rule.severity in {"critical", "high", "medium", "low"} and rule.action and rule.runbook.startswith("#")


def test_a_healthy_snapshot_has_no_issue(cfg: Settings) -> None:
    assert evaluate(healthy(), cfg) == []


def test_api_unreachable_asks_for_an_api_restart(cfg: Settings) -> None:
    found = rules(healthy(api_reachable=False, api_errors=["health: refused"]), cfg)
    assert found["api_unreachable"].restart == "api" and "api_error" not in found


def test_api_error(cfg: Settings) -> None:
    assert "api_error" in rules(healthy(api_errors=["ready: migrations_current: at 0003"]), cfg)


def test_stale_version_only_when_the_package_source_changed(cfg: Settings) -> None:
    assert "stale_version" not in rules(healthy(disk_sha=None), cfg)
    issue = rules(healthy(disk_sha="b" * 40), cfg)["stale_version"]
    assert issue.restart == "all" and set(issue.detail["running"]) == {"pipeline", "api"}


def test_runner_not_seen(cfg: Settings) -> None:
    assert "runner_not_seen" in rules(healthy(runners=[{"id": "h:1", "last_seen": ago(600)}]), cfg)
    assert "runner_not_seen" in rules(healthy(runners=[]), cfg)
    idle = {"total": 0, "by_status": {"pending": 0, "running": 0}}
    assert "runner_not_seen" not in rules(healthy(runners=[], counts=idle, running=[]), cfg)  # nothing set up yet


def test_manager_not_seen_only_with_unsettled_items(cfg: Settings) -> None:
    stale = {"last_seen": ago(3600), "info": {"by_status": {"in_progress": 1}}}
    assert rules(healthy(components={"project_manager": stale}), cfg)["manager_not_seen"].restart == "project_manager"
    done = {"last_seen": ago(3600), "info": {"by_status": {"done": 4}}}
    assert "manager_not_seen" not in rules(healthy(components={"project_manager": done}), cfg)


def test_no_task_running(cfg: Settings) -> None:
    waiting = {"id": 7, "created_at": ago(cfg.monitor_idle_minutes * 60 + 1)}
    assert "no_task_running" in rules(healthy(running=[], oldest_pending=waiting), cfg)
    assert "no_task_running" not in rules(healthy(oldest_pending=waiting), cfg)  # something runs
    fresh = {"id": 7, "created_at": ago(5)}
    assert "no_task_running" not in rules(healthy(running=[], oldest_pending=fresh), cfg)


def test_orphan_running(cfg: Settings) -> None:
    lease = {"id": 1, "started_at": ago(700), "lease_expires_at": ago(cfg.monitor_orphan_grace_seconds + 5)}
    assert rules(healthy(running=[lease]), cfg)["orphan_running"].restart == "api"
    overtime = {"id": 2, "started_at": ago(100 + cfg.monitor_orphan_grace_seconds + 5), "lease_expires_at": ago(-30),
                "timeout_seconds": 100}
    issue = rules(healthy(running=[overtime]), cfg)["orphan_running"]
    assert issue.restart == "agent_runner" and issue.detail["past_timeout"] == [2]


def test_needs_decision_waiting(cfg: Settings) -> None:
    oldest = {"id": 4, "updated_at": ago(cfg.monitor_decision_wait_minutes * 60 + 1)}
    issue = rules(healthy(oldest_decision=oldest, decisions_waiting=2), cfg)["needs_decision_waiting"]
    assert issue.detail["count"] == 2 and issue.detail["oldest_task_id"] == 4 and "curl -X PATCH" in issue.action


def test_repeated_failures_low_success_rate_and_empty_output(cfg: Settings) -> None:
    failed = [{"id": i, "status": "failed", "task_type": "run"} for i in range(cfg.pipeline_failure_streak)]
    found = rules(healthy(pipeline={"recent": failed, "success_24h": {"completed": 1, "failed": 9,
                                                                      "success_rate": 0.1}}), cfg)
    assert {"repeated_failures", "low_success_rate"} <= set(found)
    empty = [{"id": 1, "status": "completed", "task_type": "impl", "output_chars": 0},
             {"id": 2, "status": "completed", "task_type": "run", "output_chars": 0}]
    found = rules(healthy(pipeline={"recent": empty, "success_24h": None}), cfg)
    assert found["output_empty"].detail["task_ids"] == [1]  # a silent `run:` command is fine


def test_disk_low_and_log_errors(cfg: Settings) -> None:
    found = rules(healthy(disk_free_bytes=1, log_errors={"api.log": ["x ERROR y"]}), cfg)
    assert "disk_low" in found and found["log_errors"].detail["by_file"] == {"api.log": 1}


def test_log_tailer_reads_only_new_error_lines(tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    log.write_text("2026-01-01T00:00:00Z ERROR old: before the monitor started\n")
    tailer = LogTailer(tmp_path, {})
    assert tailer.scan() == {}  # first sight: from the end
    with log.open("a") as handle:
        handle.write("2026-01-01T00:00:01Z INFO a: fine\n2026-01-01T00:00:02Z ERROR b: broken\n")
        handle.write('{"level": "ERROR", "message": "json"}\npartial ERROR line without newline')
    assert tailer.scan() == {"api.log": ["2026-01-01T00:00:02Z ERROR b: broken", '{"level": "ERROR", "message": "json"}']}
    resumed = LogTailer(tmp_path, tailer.offsets)  # offsets survive a restart
    assert resumed.scan() == {}
    log.write_text("2026-01-01T00:00:03Z ERROR c: after rotation\n")  # shorter: rotated
    assert resumed.scan() == {"api.log": ["2026-01-01T00:00:03Z ERROR c: after rotation"]}


def test_report_layers_and_text(cfg: Settings) -> None:
    snapshot = healthy(runners=[])
    issues = evaluate(snapshot, cfg)
    report = build_report(snapshot, issues, {"runner_not_seen": ago(60)})
    assert [layer["name"] for layer in report["layers"]] == ["goal", "orchestration", "execution", "attention"]
    assert report["layers"][3]["issues"][0]["first_seen"] == ago(60)
    assert any("runner_not_seen" in line for line in report["needs_attention"])
    assert "Needs attention:" in render_report(report)


def test_goal_proximity_formula() -> None:
    counts = {"total": 10, "by_status": {"completed": 5}}
    full = goal_proximity({"items": 4, "done": 4}, counts, 1.0, 0, 0)
    assert full["value"] == 1.0
    assert goal_proximity({"items": 4, "done": 2}, counts, 0.5, 1, 0)["value"] == round(0.6 * 0.5 + 0.25 * 0.5 +
                                                                                         0.15 * 0.5, 3)
    assert goal_proximity(None, counts, None, 0, 1)["value"] == round(0.6 * 0.5 + 0.25, 3)  # fatal: health 0


def test_commit_message_shortens_the_direction() -> None:
    now = datetime.now(timezone.utc)

    def task(task_id: int, task_type: str, direction: str) -> Task:
        return Task(id=task_id, task_type=task_type, status="completed", direction=direction, created_at=now,
                    updated_at=now)

    message = commit_message([task(11, "spec", "Spec it"), task(12, "impl", "Implement   the thing\n" + "x" * 200)])
    subject, _, body = message.partition("\n\n")
    assert subject.startswith("[pipeline] impl 12: Implement the thing") and subject.endswith("...")
    assert len(subject) < 100 and "spec 11: Spec it" in body
