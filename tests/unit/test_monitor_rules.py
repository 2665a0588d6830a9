"""Health rules and the monitor's host rules as pure functions over a snapshot; the log tailer; the report;
the goal proximity formula."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from coherence_network import grading, health
from coherence_network.api.effectiveness import goal_proximity
from coherence_network.contract import Task, TaskStatus, TaskType
from coherence_network.gitops import commit_message
from coherence_network.health import HealthSnapshot
from coherence_network.monitor import RULES, Issue, LogTailer, Snapshot, evaluate
from coherence_network.monitor_report import build_report, render_report
from coherence_network.settings import Settings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).isoformat()


@pytest.fixture
def cfg() -> Settings:
    return Settings(_env_file=None)


def healthy(**changes: object) -> Snapshot:
    """A monitor snapshot whose host facts are fine; ``attention`` is what the API's health rules said."""
    attention = changes.pop("attention", [])
    snapshot = Snapshot(
        now=NOW,
        pipeline={"counts": {"total": 4, "by_status": {"pending": 0, "running": 1, "completed": 2, "failed": 1}},
                  "running": [{"id": 3, "task_type": "run", "claimed_by": "h:1", "elapsed_seconds": 10.0}],
                  "runners": [{"id": "h:1", "seen": True, "last_seen_seconds": 5.0}],
                  "project_manager": {"seen": True, "last_seen_seconds": 5.0,
                                      "info": {"backlog": "b.md", "items": 5, "by_status": {"done": 4, "blocked": 1}}},
                  "success_24h": {"completed": 2, "failed": 0, "success_rate": 1.0}, "attention": attention},
        running_shas={"pipeline": "a" * 40, "api": "a" * 40}, disk_sha="a" * 40, disk_free_bytes=10 * 2**30,
    )
    for key, value in changes.items():
        setattr(snapshot, key, value)
    return snapshot


def rules(snapshot: Snapshot, cfg: Settings) -> dict[str, Issue]:
    return {issue.rule: issue for issue in evaluate(snapshot, cfg)}


def health_snapshot(**changes: object) -> HealthSnapshot:
    """What the store says about a healthy pipeline: one task running on a live runner, the manager seen."""
    fields: dict[str, Any] = {
        "now": NOW, "by_status": {"pending": 0, "running": 1, "completed": 2},
        "running": [{"id": 3, "task_type": TaskType.RUN, "elapsed_seconds": 10.0, "lease_expires_at": NOW,
                     "timeout_seconds": None}],
        "recent": [{"id": 2, "status": TaskStatus.COMPLETED, "task_type": TaskType.IMPL, "output_chars": 10}],
        "success_24h": {"completed": 2, "failed": 0, "success_rate": 1.0},
        "runners": [{"id": "h:1", "seen": True, "last_seen_seconds": 5.0}],
        "components": {"project_manager": {"seen": True, "last_seen_seconds": 5.0,
                                           "info": {"by_status": {"in_progress": 1}}}},
    }
    return HealthSnapshot(**{**fields, **changes})


def flags(snapshot: HealthSnapshot, cfg: Settings) -> dict[str, dict[str, Any]]:
    return {f["rule"]: f for f in health.evaluate(snapshot, cfg)}


def test_every_rule_names_severity_action_and_runbook() -> None:
    assert {r.name for r in RULES} == {"api_unreachable", "api_error", "stale_version", "disk_low", "log_errors"}
    assert {r.name for r in health.RULES} == {
        "store_not_ready", "no_runner", "runner_blocked", "component_held_back", "manager_stale", "no_task_running",
        "orphan_running", "paused", "breaker_open", "stuck", "needs_decision", "repeated_failures", "low_success_rate",
        "empty_output", "stalled_task", "day_cap_reached"}
    for rule in (*RULES, *health.RULES):
        assert rule.severity in grading.SEVERITIES and rule.action and rule.runbook.startswith("#")


def test_every_action_is_a_command_to_paste_with_the_real_ids(cfg: Settings) -> None:
    """No curl with $AGENT_API_BASE, no literal {id}: `coherence ...` with the task's id, and the console's page."""
    for rule in RULES:
        assert rule.command.startswith(("coherence ", "make run")), rule.name
    waiting = [{"id": 42, "waiting_seconds": 60.0, "decision_prompt": "?"}]
    failed = [{"id": n, "status": TaskStatus.FAILED, "task_type": TaskType.RUN, "output_chars": 1}
              for n in (17, 16, 15)]
    stopped = {"seen": False, "state": "stopped", "last_seen_seconds": 9.0,
               "info": {"backlog": "my backlog.md", "by_status": {"in_progress": 1}, "stopped": "SIGTERM"}}
    ready = [{"name": "store_writable", "ok": False, "detail": "read-only"}]
    found = flags(health_snapshot(needs_decision=waiting, recent=failed, components={"project_manager": stopped},
                                  ready=ready), cfg)
    assert found["needs_decision"]["command"] == "coherence decide 42 ANSWER"
    assert found["needs_decision"]["console"] == "/decisions"
    assert (found["repeated_failures"]["command"], found["repeated_failures"]["console"]) == \
        ("coherence logs 17", "/tasks/17")
    assert found["manager_stale"]["command"] == "coherence pm --backlog 'my backlog.md'"
    assert "stopped (SIGTERM)" in found["manager_stale"]["message"]
    assert found["store_not_ready"]["severity"] == "critical"
    assert found["store_not_ready"]["command"] == "coherence cleanup --days 3"
    for flag in found.values():
        assert flag["command"].startswith("coherence ") and "{" not in flag["command"] and "$" not in flag["command"]


def test_stalled_task_flags_running_tasks_silent_past_the_warn_limit_longest_first(cfg: Settings) -> None:
    cfg = cfg.model_copy(update={"coherence_stall_warn_seconds": 600.0, "coherence_stall_stop_seconds": 1800.0})
    running = [{"id": n, "task_type": TaskType.IMPL, "elapsed_seconds": 2000.0, "lease_expires_at": NOW,
                "timeout_seconds": None, "silent_seconds": silent} for n, silent in ((3, 700.0), (4, 1500.0),
                                                                                     (5, 599.0), (6, None))]
    flag = flags(health_snapshot(running=running), cfg)["stalled_task"]
    assert flag["task_ids"] == [4, 3] and flag["severity"] == "medium"
    assert (flag["command"], flag["console"]) == ("coherence logs 4", "/tasks/4")
    assert "2 running task(s) printed nothing for over 10 min (the longest 25 min; stopped at 30 min)" == \
        flag["message"]
    assert "stalled_task" not in flags(health_snapshot(running=running[2:]), cfg)


def test_grades_are_the_same_everywhere() -> None:
    """critical and high need attention; medium lowers health less; low is shown without lowering it."""
    assert [grading.grade(s).attention for s in grading.SEVERITIES] == [True, True, False, False]
    assert grading.health_term([{"severity": "low"}], 0) == 1.0
    assert grading.health_term([{"severity": "low"}, {"severity": "medium"}], 0) == 0.75
    assert grading.health_term([{"severity": "high"}], 0) == 0.5
    assert grading.health_term([{"severity": "critical"}], 0) == 0.0 == grading.health_term([], 1)
    assert health.host_issues([{"rule": "no_runner"}, {"rule": "disk_low"}]) == [{"rule": "disk_low"}]


def test_a_healthy_snapshot_has_no_issue(cfg: Settings) -> None:
    assert evaluate(healthy(), cfg) == []
    assert health.evaluate(health_snapshot(), cfg) == []


def test_api_unreachable_asks_for_an_api_restart(cfg: Settings) -> None:
    found = rules(healthy(api_reachable=False, api_errors=["health: refused"], pipeline=None), cfg)
    assert set(found) == {"api_unreachable"} and found["api_unreachable"].restart == "api"


def test_api_error(cfg: Settings) -> None:
    assert "api_error" in rules(healthy(api_errors=["ready: migrations_current: at 0003"]), cfg)


def test_stale_version_only_when_the_package_source_changed(cfg: Settings) -> None:
    assert "stale_version" not in rules(healthy(disk_sha=None), cfg)
    issue = rules(healthy(disk_sha="b" * 40), cfg)["stale_version"]
    assert issue.restart == "all" and issue.detail["disk"] == "b" * 40


def test_the_monitor_takes_the_apis_health_flags_with_their_restart(cfg: Settings) -> None:
    flag = {"rule": "no_runner", "severity": "high", "message": "m", "action": "a", "runbook": "#pipeline-recovery",
            "task_ids": []}
    issue = rules(healthy(attention=[flag]), cfg)["no_runner"]
    assert (issue.severity, issue.action, issue.restart) == ("high", "a", "agent_runner")


def test_no_runner(cfg: Settings) -> None:
    gone = [{"id": "h:1", "seen": False, "last_seen_seconds": 600.0}]
    assert "no_runner" in flags(health_snapshot(runners=gone), cfg)
    assert "no_runner" in flags(health_snapshot(runners=[]), cfg)
    idle = {"pending": 0, "running": 0}
    assert "no_runner" not in flags(health_snapshot(runners=[], by_status=idle, running=[]), cfg)  # no work


def test_runner_blocked_names_the_runner_and_its_error(cfg: Settings) -> None:
    error = "slot 1: task 4 not started: cannot write the task log: [Errno 28] No space left on device"
    blocked = {"id": "h:1", "seen": True, "last_seen_seconds": 5.0,
               "info": {"workers": 2, "slots_alive": 2, "slots_blocked": 1, "last_error": error}}
    flag = flags(health_snapshot(runners=[blocked]), cfg)["runner_blocked"]
    assert flag["severity"] == "high" and "h:1: 1 of 2 slot(s) blocked" in flag["message"] and error in flag["message"]
    assert "runner_blocked" not in flags(health_snapshot(runners=[{**blocked, "seen": False}]), cfg)  # no_runner's
    working = {**blocked, "info": {**blocked["info"], "slots_blocked": 0}}
    assert "runner_blocked" not in flags(health_snapshot(runners=[working]), cfg)
    assert "runner_blocked" not in flags(health_snapshot(runners=[{**blocked, "info": None}]), cfg)  # older runner


def test_manager_stale_only_with_unsettled_items(cfg: Settings) -> None:
    stale = {"seen": False, "last_seen_seconds": 3600.0, "info": {"by_status": {"in_progress": 1}}}
    assert "manager_stale" in flags(health_snapshot(components={"project_manager": stale}), cfg)
    done = {"seen": False, "last_seen_seconds": 3600.0, "info": {"by_status": {"done": 4}}}
    assert "manager_stale" not in flags(health_snapshot(components={"project_manager": done}), cfg)
    assert health.BY_NAME["manager_stale"].restart == "project_manager"


def test_no_task_running(cfg: Settings) -> None:
    waiting = {"run": {"count": 2, "oldest_wait_seconds": cfg.monitor_idle_minutes * 60 + 1}}
    assert "no_task_running" in flags(health_snapshot(running=[], pending=waiting), cfg)
    assert "no_task_running" not in flags(health_snapshot(pending=waiting), cfg)  # something runs
    fresh = {"run": {"count": 2, "oldest_wait_seconds": 5.0}}
    assert "no_task_running" not in flags(health_snapshot(running=[], pending=fresh), cfg)


def test_paused_is_a_warning_naming_who_why_and_since_and_paused_work_is_not_idle(cfg: Settings) -> None:
    waiting = {"run": {"count": 2, "oldest_wait_seconds": cfg.monitor_idle_minutes * 60 + 1}}
    held_run = [{"scope": "run", "since": NOW, "by": "cli:alice", "reason": "provider down"}]
    found = flags(health_snapshot(running=[], pending=waiting, pauses=held_run), cfg)
    assert "no_task_running" not in found  # the paused type waits on purpose
    paused = found["paused"]
    assert paused["severity"] == "medium" and not grading.needs_attention([paused])
    assert paused["command"] == "coherence resume --type run" and paused["console"] == "/pauses"  # its buttons
    assert "run since 2026-11-25 12:00:00 UTC by cli:alice: provider down" in paused["message"]
    other = {**waiting, "spec": waiting["run"]}  # another type waits too, unpaused: that one is idle
    assert "no_task_running" in flags(health_snapshot(running=[], pending=other, pauses=held_run), cfg)
    held_all = [{"scope": "all", "since": NOW, "by": "cli:bob", "reason": "maintenance"}]
    found = flags(health_snapshot(running=[], pending=other, pauses=held_all), cfg)
    assert "no_task_running" not in found and found["paused"]["command"] == "coherence resume"
    assert "paused" not in flags(health_snapshot(), cfg)


def test_breaker_open_needs_attention_and_says_how_to_resume(cfg: Settings) -> None:
    tripped = [{"scope": "spec", "since": NOW, "by": "breaker",
                "reason": "circuit breaker: 5 failed runs of spec in a row (the last: task 9, timeout: 60 s)"}]
    found = flags(health_snapshot(pauses=tripped), cfg)
    breaker = found["breaker_open"]
    assert breaker["severity"] == "high" and grading.needs_attention([breaker])
    assert breaker["command"] == "coherence resume --type spec" and breaker["runbook"] == "#the-circuit-breaker"
    assert "spec since 2026-11-25 12:00:00 UTC (circuit breaker: 5 failed runs" in breaker["message"]
    assert "paused" not in found  # one flag for one cause: the breaker's (high), not the operator's pause warning too
    operator = [{"scope": "spec", "since": NOW, "by": "cli:alice", "reason": "provider down"}]
    assert "breaker_open" not in flags(health_snapshot(pauses=operator), cfg)


def test_orphan_running(cfg: Settings) -> None:
    lease = {"id": 1, "elapsed_seconds": 700.0, "timeout_seconds": None,
             "lease_expires_at": NOW - timedelta(seconds=cfg.monitor_orphan_grace_seconds + 5)}
    overtime = {"id": 2, "elapsed_seconds": 100 + cfg.monitor_orphan_grace_seconds + 5, "timeout_seconds": 100,
                "lease_expires_at": NOW + timedelta(seconds=30)}
    found = flags(health_snapshot(running=[lease, overtime]), cfg)["orphan_running"]
    assert found["task_ids"] == [1, 2] and health.BY_NAME["orphan_running"].restart == "api"


def test_a_waiting_decision_needs_a_person_at_once(cfg: Settings) -> None:
    waiting = [{"id": 4, "waiting_seconds": 1.0}, {"id": 5, "waiting_seconds": 120.0}]
    found = flags(health_snapshot(needs_decision=waiting), cfg)["needs_decision"]
    assert found["task_ids"] == [4, 5] and found["command"] == "coherence decide 4 ANSWER"
    assert found["severity"] == "medium"
    overdue = [{"id": 4, "waiting_seconds": cfg.monitor_decision_wait_minutes * 60 + 1}]
    assert flags(health_snapshot(needs_decision=overdue), cfg)["needs_decision"]["severity"] == "high"
    # the oldest may be past the listed ones: the store's figure over all waiting tasks counts
    unlisted = health_snapshot(needs_decision=waiting, oldest_decision_seconds=cfg.monitor_decision_wait_minutes * 60)
    assert flags(unlisted, cfg)["needs_decision"]["severity"] == "high"


def test_repeated_failures_low_success_rate_and_empty_output(cfg: Settings) -> None:
    failed = [{"id": i, "status": TaskStatus.FAILED, "task_type": TaskType.RUN, "output_chars": 0}
              for i in range(cfg.pipeline_failure_streak)]
    rate = {"completed": 1, "failed": 9, "success_rate": 0.1}
    assert {"repeated_failures", "low_success_rate"} <= set(flags(health_snapshot(recent=failed, success_24h=rate),
                                                                  cfg))
    empty = [{"id": 1, "status": TaskStatus.COMPLETED, "task_type": TaskType.IMPL, "output_chars": 0},
             {"id": 2, "status": TaskStatus.COMPLETED, "task_type": TaskType.RUN, "output_chars": 0}]
    assert flags(health_snapshot(recent=empty), cfg)["empty_output"]["task_ids"] == [1]  # a silent `run:` is fine


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
    assert tailer.scan() == {
        "api.log": ["2026-01-01T00:00:02Z ERROR b: broken", '{"level": "ERROR", "message": "json"}']}
    resumed = LogTailer(tmp_path, tailer.offsets)  # offsets survive a restart
    assert resumed.scan() == {}
    log.write_text("2026-01-01T00:00:03Z ERROR c: after rotation\n")  # shorter: rotated
    assert resumed.scan() == {"api.log": ["2026-01-01T00:00:03Z ERROR c: after rotation"]}


def test_report_layers_and_text_for_people(cfg: Settings) -> None:
    flag = {"rule": "needs_decision", "severity": "medium", "message": "1 task(s) wait for a decision", "action": "a",
            "runbook": "#unblock-a-task-that-needs-a-decision", "task_ids": [4]}
    snapshot = healthy(attention=[flag])
    issues = evaluate(snapshot, cfg)
    report = build_report(snapshot, issues, {"needs_decision": ago(60)})
    assert [layer["name"] for layer in report["layers"]] == ["goal", "orchestration", "execution", "attention"]
    assert report["layers"][3]["issues"][0]["first_seen"] == ago(60)
    assert report["layers"][1]["runners_seen"] == ["h:1"]
    text = render_report(report)
    assert "needs_decision: 1 task(s) wait for a decision" in text and "(nothing)" not in text
    assert "done 4, blocked 1" in text and "running 1, completed 2, failed 1" in text
    assert "{" not in text and "[" not in text.replace("[medium]", "")  # values for people, never reprs


def test_goal_proximity_formula() -> None:
    counts = {"total": 10, "by_status": {"completed": 5}}
    full = goal_proximity({"items": 4, "done": 4}, counts, 1.0, 1.0)
    assert full["value"] == 1.0
    assert goal_proximity({"items": 4, "done": 2}, counts, 0.5, 0.5)["value"] == round(0.6 * 0.5 + 0.25 * 0.5 +
                                                                                        0.15 * 0.5, 3)
    assert goal_proximity(None, counts, None, 0.0)["value"] == round(0.6 * 0.5 + 0.25, 3)  # fatal: health 0


def test_commit_message_shortens_the_direction() -> None:
    now = datetime.now(UTC)

    def task(task_id: int, task_type: str, direction: str) -> Task:
        return Task(id=task_id, task_type=task_type, status="completed", direction=direction, created_at=now,
                    updated_at=now)

    message = commit_message([task(11, "spec", "Spec it"), task(12, "impl", "Implement   the thing\n" + "x" * 200)])
    subject, _, body = message.partition("\n\n")
    assert subject.startswith("[pipeline] impl 12: Implement the thing") and subject.endswith("...")
    assert len(subject) < 100 and "spec 11: Spec it" in body


def test_a_component_held_back_is_named_with_its_host_and_reason(cfg: Settings) -> None:
    """The supervisor keeps the rest running while it holds a crashing component back: every view says which."""
    issue = {"component": "monitor", "host": "vm", "reason": "monitor crashed 5 times within 300 s (last exit code -9)"}
    flag = flags(health_snapshot(fatal=[issue]), cfg)["component_held_back"]
    assert flag["severity"] == "high" and "monitor on vm: monitor crashed 5 times" in flag["message"]
    assert flag["command"] == "coherence fatal --clear"
    assert "component_held_back" not in flags(health_snapshot(), cfg)
