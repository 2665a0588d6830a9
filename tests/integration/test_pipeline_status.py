"""pipeline-status, metrics and `coherence status`: store statistics on both backends, attention flags, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from coherence_network.api.app import create_app
from coherence_network.clock import utcnow
from coherence_network.settings import Settings
from coherence_network.status_view import render_status
from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine, migrate
from coherence_network.store.schema import tasks
from tests.support.api import ServedApi
from tests.support.history import insert_history
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def _row(now: datetime, task_type: str, status: str, *, age: timedelta, wait: float, run: float) -> dict[str, Any]:
    finished = now - age
    started = finished - timedelta(seconds=run)
    return {"direction": "d", "task_type": task_type, "status": status, "created_at": started - timedelta(seconds=wait),
            "started_at": started, "finished_at": finished, "updated_at": finished, "output": "ok", "command": None,
            "run_seconds": run, "queue_seconds": wait}  # as the finish stores them


ESTIMATE = 2 ** 0.5 - 1  # a percentile from the rollup's buckets is within a factor sqrt(2) (store/rollup.py)


def _percentile(values: list[float], p: float) -> float:
    """percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = p * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_task_metrics_on_both_backends(migrated_store_url: str) -> None:
    engine = create_store_engine(migrated_store_url)
    migrate(engine)
    now = utcnow()
    recent = [_row(now, "impl", "completed" if i % 4 else "failed", age=timedelta(hours=1), wait=i * 0.5, run=10.0 + i)
              for i in range(20)]
    into_this_hour = now - now.replace(minute=0, second=0, microsecond=0)  # so the last hourly bucket holds them
    recent += [_row(now, "spec", "completed", age=into_this_hour / 2, wait=1.0, run=3.0 + i) for i in range(3)]
    older = [_row(now, "impl", "failed", age=timedelta(days=3), wait=100.0, run=500.0) for _ in range(5)]
    ancient = [_row(now, "impl", "completed", age=timedelta(days=30), wait=9999.0, run=9999.0) for _ in range(7)]
    unfinished = {"direction": "p", "task_type": "test", "status": "pending", "created_at": now, "updated_at": now,
                  "started_at": None, "finished_at": None, "output": None, "command": None, "run_seconds": None,
                  "queue_seconds": None}
    with engine.begin() as conn:
        insert_history(conn, recent + older + ancient + [unfinished])

    result = TaskStore(engine).task_metrics(now)
    day = result["windows"]["24h"]["by_type"]
    impl_runs = [10.0 + i for i in range(20)]
    assert day["impl"]["completed"] == 15 and day["impl"]["failed"] == 5 and day["impl"]["success_rate"] == 0.75
    assert day["impl"]["run_seconds"]["n"] == 20
    assert day["impl"]["run_seconds"]["p50"] == pytest.approx(_percentile(impl_runs, 0.5), rel=ESTIMATE)
    assert day["impl"]["run_seconds"]["p95"] == pytest.approx(_percentile(impl_runs, 0.95), rel=ESTIMATE)
    assert day["impl"]["queue_wait_seconds"]["p95"] == pytest.approx(_percentile([i * 0.5 for i in range(20)], 0.95),
                                                                      rel=ESTIMATE)
    assert day["spec"]["run_seconds"]["p50"] == pytest.approx(4.0, rel=ESTIMATE)
    assert day["all"]["completed"] == 18 and day["all"]["run_seconds"]["n"] == 23
    assert "test" not in day  # pending tasks are not finished work
    week = result["windows"]["7d"]["by_type"]
    assert week["impl"]["failed"] == 10 and week["impl"]["run_seconds"]["n"] == 25  # 30-day-old rows are outside
    assert week["impl"]["run_seconds"]["p95"] == pytest.approx(_percentile(impl_runs + [500.0] * 5, 0.95),
                                                               rel=ESTIMATE)
    hourly = result["throughput_per_hour"]["hourly"]
    assert len(hourly) == 24 and sum(h["completed"] for h in hourly) == 18 and sum(h["failed"] for h in hourly) == 5
    assert hourly[-1]["hour"].endswith("Z") and hourly[-1]["completed"] == 3
    engine.dispose()


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(coherence_home=tmp_path / "home", pipeline_stuck_minutes=0.0001, pipeline_failure_streak=2,
                        pipeline_success_rate_min_tasks=3, pipeline_min_success_rate=0.9)
    with TestClient(create_app(settings)) as client:
        yield client


def _run(client: TestClient, task_type: str, status: str, output: str = "done") -> dict[str, Any]:
    client.post("/api/agent/tasks", json={"direction": "d", "task_type": task_type})
    task = client.post("/api/agent/tasks/claim", json={"runner_id": "r1", "types": [task_type]}).json()
    body = {"claim_token": task["claim_token"], "status": status, "output": output, "exit_code": 0}
    return client.post(f"/api/agent/tasks/{task['id']}/finish", json=body).json()


def test_empty_store_answers_200_with_every_section(app_client: TestClient) -> None:
    for path in ("/api/agent/pipeline-status", "/api/agent/metrics"):
        assert app_client.get(path).status_code == 200
    status = app_client.get("/api/agent/pipeline-status").json()
    assert status["running"] == [] and status["pending"] == {} and status["needs_decision"] == []
    assert status["recent"] == [] and status["project_manager"] is None and status["runners"] == []
    assert status["attention"] == [] and status["counts"]["total"] == 0


def test_attention_flags_and_sections(app_client: TestClient) -> None:
    _run(app_client, "impl", "completed", output="   ")
    _run(app_client, "impl", "failed")
    _run(app_client, "test", "failed")
    app_client.post("/api/agent/tasks", json={"direction": "ask", "task_type": "spec"})
    asked = app_client.post("/api/agent/tasks/claim", json={"runner_id": "r1"}).json()
    app_client.post(f"/api/agent/tasks/{asked['id']}/finish", json={
        "claim_token": asked["claim_token"], "status": "needs_decision", "decision_prompt": "red or blue?"})
    app_client.post("/api/agent/tasks", json={"direction": "long", "task_type": "review"})
    running = app_client.post("/api/agent/tasks/claim", json={"runner_id": "r2"}).json()
    app_client.post("/api/agent/tasks", json={"direction": "later", "task_type": "impl"})
    app_client.post("/api/agent/components/heartbeat", json={
        "component": "project_manager", "host": "h1", "pid": 42, "info": {"items": 3, "by_status": {"done": 1}}})

    status = app_client.get("/api/agent/pipeline-status").json()
    flags = {f["rule"]: f for f in status["attention"]}
    assert set(flags) == {"stuck", "repeated_failures", "empty_output", "low_success_rate", "no_runner",
                          "needs_decision"}
    assert flags["stuck"]["task_ids"] == [running["id"]]
    assert flags["needs_decision"]["task_ids"] == [asked["id"]]
    assert [t["id"] for t in status["running"]] == [running["id"]] and status["running"][0]["claimed_by"] == "r2"
    assert status["pending"]["impl"]["count"] == 1 and status["pending"]["impl"]["oldest_wait_seconds"] >= 0
    assert status["needs_decision"][0]["decision_prompt"] == "red or blue?"
    assert [t["status"] for t in status["recent"]] == ["failed", "failed", "completed"]
    assert status["project_manager"]["seen"] and status["project_manager"]["info"]["items"] == 3

    app_client.post("/api/agent/runners/heartbeat", json={"runner_id": "r2", "host": "h", "pid": 7, "version": "1"})
    status = app_client.get("/api/agent/pipeline-status").json()
    assert "no_runner" not in {f["rule"] for f in status["attention"]}
    assert status["runners"][0]["id"] == "r2" and status["runners"][0]["seen"]


def test_status_text_has_no_exit_none_and_commands_to_paste(app_client: TestClient) -> None:
    """A task that ended without an exit code (its lease ran out, or the runner gave none) reads without one, never
    "exit None"; each flag is followed by the command to paste, with the real id."""
    app_client.post("/api/agent/tasks", json={"direction": "no code", "task_type": "spec"})
    task = app_client.post("/api/agent/tasks/claim", json={"runner_id": "r1"}).json()
    app_client.post(f"/api/agent/tasks/{task['id']}/finish", json={"claim_token": task["claim_token"],
                                                                   "status": "failed"})
    app_client.post("/api/agent/tasks", json={"direction": "ask", "task_type": "spec"})
    asked = app_client.post("/api/agent/tasks/claim", json={"runner_id": "r1"}).json()
    app_client.post(f"/api/agent/tasks/{asked['id']}/finish", json={
        "claim_token": asked["claim_token"], "status": "needs_decision", "decision_prompt": "red or blue?"})
    text = render_status(app_client.get("/api/agent/pipeline-status").json())
    assert f"finished #{task['id']} spec failed (" in text and "exit None" not in text
    assert "WARNING [medium] needs_decision: 1 task(s) wait for a decision" in text
    assert f"    run: coherence decide {asked['id']} ANSWER" in text and "$AGENT_API_BASE" not in text


def _coherence(*args: str, api: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_API_BASE": api, "COHERENCE_HTTP_TIMEOUT": "5"}
    return subprocess.run([sys.executable, "-m", "coherence_network.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_status_command_layers_json_task_and_log(served_api: ServedApi) -> None:
    healthy = _coherence("status", api=served_api.url)
    assert healthy.returncode == 0, healthy.stderr
    assert [line for line in healthy.stdout.splitlines() if line.isupper()] == [
        "GOAL", "ORCHESTRATION", "TASKS", "ATTENTION"]
    task = httpx.post(f"{served_api.url}/api/agent/tasks",
                      json={"direction": "say hi", "task_type": "run", "command": "echo hi"}).json()
    as_json = _coherence("status", "--json", api=served_api.url)
    assert as_json.returncode == 1  # a pending task and no runner: attention
    assert json.loads(as_json.stdout)["pending"]["run"]["count"] == 1
    one = _coherence("status", "--task-id", str(task["id"]), api=served_api.url)
    assert one.returncode == 0 and "status: pending" in one.stdout and "say hi" in one.stdout
    log_path = served_api.home / "logs" / f"task_{task['id']}.log"
    log_path.write_text("line 1\nline 2\nline 3\n")
    log = _coherence("status", "--task-id", str(task["id"]), "--log", "--lines", "2", api=served_api.url)
    assert log.returncode == 0 and log.stdout == "line 2\nline 3\n"
    assert _coherence("status", "--task-id", "999", api=served_api.url).returncode == 1


def test_status_exit_2_in_one_line_with_the_runbook_section_when_the_api_is_down(tmp_path: Path) -> None:
    """It could not find out: a connection error, like a bad setting (exit 1 says the pipeline needs a person)."""
    script = ROOT / "scripts" / "check_pipeline.py"
    env = {**os.environ, "AGENT_API_BASE": f"http://127.0.0.1:{free_port()}", "COHERENCE_HTTP_TIMEOUT": "2"}
    done = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "docs/RUNBOOK.md#pipeline-recovery" in done.stderr and done.stderr.count("\n") == 1


def test_prometheus_queue_gauges_are_exposed(app_client: TestClient) -> None:
    text = app_client.get("/metrics").text
    for name in ("coherence_tasks{", "coherence_oldest_pending_age_seconds", "coherence_runners_seen"):
        assert name in text


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, its labels) -> value, as Prometheus reads /metrics."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_queue_health_in_metrics_and_status_on_both_backends(migrated_store_url: str, tmp_path: Path) -> None:
    """The oldest pending task per type, the oldest waiting decision (since it started waiting: updated_at, not
    created_at), failed tasks out of attempts per type, and the queue wait by type as tasks are claimed."""
    now = utcnow()

    def row(task_type: str, status: str, *, created: float, updated: float | None = None, attempts: int = 0,
            max_attempts: int = 3) -> dict[str, Any]:
        return {"direction": "d", "task_type": task_type, "status": status, "attempts": attempts,
                "max_attempts": max_attempts, "created_at": now - timedelta(seconds=created),
                "updated_at": now - timedelta(seconds=updated if updated is not None else created),
                "decision_prompt": "?" if status == "needs_decision" else None}

    engine = create_store_engine(migrated_store_url)
    with engine.begin() as conn:
        conn.execute(tasks.insert(), [
            row("impl", "pending", created=7200), row("impl", "pending", created=60),
            row("spec", "pending", created=600),
            row("test", "needs_decision", created=50000, updated=1800),  # asked late: waits since its last run
            row("review", "needs_decision", created=9000, updated=3 * 3600),
            row("impl", "failed", created=99, attempts=3), row("impl", "failed", created=99, attempts=4),
            row("impl", "failed", created=99, attempts=1),  # attempts left: not out of them
            row("test", "failed", created=99, attempts=2, max_attempts=2), row("test", "completed", created=99)])
    engine.dispose()
    settings = Settings(coherence_home=tmp_path / "home", database_url=migrated_store_url)
    with TestClient(create_app(settings)) as client:
        status = client.get("/api/agent/pipeline-status").json()
        assert status["oldest_decision_seconds"] == pytest.approx(3 * 3600, abs=60)
        assert "decisions waiting: 2, the oldest for 3.0 h" in render_status(status)
        claimed = client.post("/api/agent/tasks/claim", json={"runner_id": "r", "types": ["spec"]}).json()
        assert claimed["task_type"] == "spec"
        found = _samples(client.get("/metrics").text)
    oldest = {labels[0][1]: value for (name, labels), value in found.items()
              if name == "coherence_oldest_pending_age_seconds"}
    assert oldest["impl"] == pytest.approx(7200, abs=60) and oldest["spec"] == 0 and oldest["run"] == 0
    assert found[("coherence_oldest_decision_age_seconds", ())] == pytest.approx(3 * 3600, abs=60)
    spent = {labels[0][1]: value for (name, labels), value in found.items()
             if name == "coherence_tasks_out_of_attempts"}
    assert spent == {"spec": 0, "test": 1, "impl": 2, "review": 0, "heal": 0, "run": 0}
    assert found[("coherence_queue_wait_seconds_count", (("task_type", "spec"),))] == 1
    assert found[("coherence_queue_wait_seconds_bucket", (("le", "300.0"), ("task_type", "spec")))] == 0
    assert found[("coherence_queue_wait_seconds_bucket", (("le", "900.0"), ("task_type", "spec")))] == 1
