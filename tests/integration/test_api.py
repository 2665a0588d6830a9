"""The API over real HTTP on an ephemeral loopback port, every error status, durability (a `coherence api` process
where the process is the subject: SIGKILL, exit codes at start, its logging set-up)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.api import ApiProcess, ServedApi
from tests.support.net import free_port

TASK = {"direction": "say hello", "task_type": "run", "command": "echo hello"}


@pytest.fixture
def http(served_api: ServedApi) -> httpx.Client:
    with httpx.Client(base_url=served_api.url, timeout=30) as client:
        yield client


def test_readiness_checks_do_not_fill_the_log(api_process: ApiProcess) -> None:
    """The process's own logging set-up (logfiles.setup_logging) is what keeps alembic quiet: a process, here."""
    for _ in range(5):
        assert httpx.get(f"{api_process.url}/api/ready", timeout=30).status_code == 200
    log = (api_process.home / "logs" / "api.log").read_text(encoding="utf-8")
    assert "alembic" not in log and "API started" in log  # two alembic lines per /api/ready before


def test_health_ready_version_and_docs(http: httpx.Client) -> None:
    assert http.get("/api/health").json()["status"] == "ok"
    ready = http.get("/api/ready")
    assert ready.status_code == 200
    assert {c["name"] for c in ready.json()["checks"]} == {"store_reachable", "migrations_current", "store_writable"}
    version = http.get("/api/version").json()
    assert version["version"] and "git_sha" in version
    assert http.get("/docs").status_code == 200
    assert "/api/agent/tasks/claim" in http.get("/openapi.json").json()["paths"]


def test_create_get_list_count(http: httpx.Client) -> None:
    created = http.post("/api/agent/tasks", json=TASK)
    assert created.status_code == 201
    task = created.json()
    assert task["status"] == "pending" and task["created_at"].endswith("Z")
    assert http.get(f"/api/agent/tasks/{task['id']}").json()["direction"] == "say hello"
    for i in range(4):
        http.post("/api/agent/tasks", json={"direction": f"s{i}", "task_type": "spec"})
    page = http.get("/api/agent/tasks", params={"task_type": "spec", "limit": 3, "offset": 0, "order": "oldest"}).json()
    assert page["total"] == 4 and [t["direction"] for t in page["items"]] == ["s0", "s1", "s2"]
    assert http.get("/api/agent/tasks/count").json() == {
        "total": 5,
        "by_status": {"pending": 5, "running": 0, "completed": 0, "failed": 0, "needs_decision": 0, "cancelled": 0}}


def test_bad_input_is_422_with_field_messages_and_changes_nothing(http: httpx.Client) -> None:
    bad = http.post("/api/agent/tasks", json={"direction": "", "task_type": "dance"})
    assert bad.status_code == 422
    fields = {tuple(e["loc"]) for e in bad.json()["detail"]}
    assert ("body", "direction") in fields and ("body", "task_type") in fields
    assert http.post("/api/agent/tasks", json={**TASK, "direction": "x" * 5001}).status_code == 422
    assert http.post("/api/agent/tasks", json={**TASK, "surprise": 1}).status_code == 422
    not_json = http.post("/api/agent/tasks", content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    assert http.get("/api/agent/tasks", params={"limit": 0}).status_code == 422
    assert http.get("/api/agent/tasks", params={"status": "sleeping"}).status_code == 422
    assert http.get("/api/agent/tasks/abc").status_code == 404  # no such path: only numbers reach the id
    assert http.get("/api/agent/tasks/-1").status_code == 422 and http.get("/api/agent/tasks/0").status_code == 422
    assert http.post("/api/agent/tasks/claim", json={"runner_id": "r", "wait_seconds": 999}).status_code == 422
    assert http.get("/api/agent/tasks/count").json()["total"] == 0


def test_a_method_a_path_lacks_is_405_naming_every_method_it_has(http: httpx.Client) -> None:
    """The {task_id} routes never take /tasks/batch, /claim, /claims or /count for an id (that was a 422)."""
    for path, allowed in (("batch", "POST"), ("claim", "POST"), ("claims", "POST"), ("count", "GET")):
        refused = http.patch(f"/api/agent/tasks/{path}", json={"decision": "yes"})
        assert refused.status_code == 405 and refused.headers["allow"] == allowed, path
    assert http.get("/api/agent/tasks/claim").headers["allow"] == "POST"
    both = http.delete("/api/agent/tasks/1")
    assert both.status_code == 405 and both.headers["allow"] == "GET, PATCH"
    listing = http.put("/api/agent/tasks")
    assert listing.status_code == 405 and listing.headers["allow"] == "GET, POST"
    assert http.get("/api/agent/tasks/1/finish").headers["allow"] == "POST"


def test_unknown_ids_are_404(http: httpx.Client) -> None:
    assert http.get("/api/agent/tasks/4242").status_code == 404
    assert http.patch("/api/agent/tasks/4242", json={"decision": "yes"}).status_code == 404
    assert http.get("/api/agent/tasks/4242/log").status_code == 404
    assert http.post("/api/agent/tasks/4242/heartbeat", json={"claim_token": 1}).status_code == 404


def test_decision_flow_and_409s(http: httpx.Client) -> None:
    task = http.post("/api/agent/tasks", json=TASK).json()
    early = http.patch(f"/api/agent/tasks/{task['id']}", json={"decision": "yes"})
    assert early.status_code == 409 and early.json()["current_status"] == "pending"
    assert "pending" in early.json()["detail"]
    claim = http.post("/api/agent/tasks/claim", json={"runner_id": "r1"}).json()
    token = claim["claim_token"]
    asked = http.post(f"/api/agent/tasks/{task['id']}/finish",
                      json={"claim_token": token, "status": "needs_decision", "decision_prompt": "deploy?"})
    assert asked.status_code == 200 and asked.json()["status"] == "needs_decision"
    stale = http.post(f"/api/agent/tasks/{task['id']}/finish", json={"claim_token": token, "status": "completed"})
    assert stale.status_code == 409 and stale.json()["current_status"] == "needs_decision"
    decided = http.patch(f"/api/agent/tasks/{task['id']}", json={"decision": "yes", "decided_by": "api:ops"})
    assert decided.status_code == 200
    assert decided.json()["status"] == "pending" and decided.json()["decided_by"] == "api:ops"
    twice = http.patch(f"/api/agent/tasks/{task['id']}", json={"decision": "no"})
    assert twice.status_code == 409
    assert http.get(f"/api/agent/tasks/{task['id']}").json()["decision"] == "yes"
    assert http.patch(f"/api/agent/tasks/{task['id']}", json={"decision": "a", "status": "pending"}).status_code == 422


def test_retry_of_a_failed_task(http: httpx.Client) -> None:
    task = http.post("/api/agent/tasks", json=TASK).json()
    claim = http.post("/api/agent/tasks/claim", json={"runner_id": "r1"}).json()
    http.post(f"/api/agent/tasks/{task['id']}/finish",
              json={"claim_token": claim["claim_token"], "status": "failed", "exit_code": 2, "output": "boom"})
    retried = http.patch(f"/api/agent/tasks/{task['id']}", json={"status": "pending"})
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    assert http.patch(f"/api/agent/tasks/{task['id']}", json={"status": "pending"}).status_code == 409


def test_claim_long_poll_wakes_when_a_task_is_created(http: httpx.Client, served_api: ServedApi) -> None:
    assert http.post("/api/agent/tasks/claim", json={"runner_id": "r", "wait_seconds": 0}).status_code == 204
    result: dict[str, object] = {}

    def wait_for_work() -> None:
        with httpx.Client(base_url=served_api.url, timeout=30) as other:
            started = time.monotonic()
            response = other.post("/api/agent/tasks/claim", json={"runner_id": "waiter", "wait_seconds": 20})
            result.update(status=response.status_code, task=response.json(), waited=time.monotonic() - started)

    waiter = threading.Thread(target=wait_for_work)
    waiter.start()
    time.sleep(0.5)  # let the claim start waiting: the point is that it is already parked when work arrives
    created_at = time.monotonic()
    task = http.post("/api/agent/tasks", json=TASK).json()
    waiter.join(30)
    assert result["status"] == 200 and result["task"]["id"] == task["id"]  # type: ignore[index]
    assert result["waited"] < 20 and time.monotonic() - created_at < 2


def test_heartbeat_and_runner_registry(http: httpx.Client) -> None:
    task = http.post("/api/agent/tasks", json=TASK).json()
    claim = http.post("/api/agent/tasks/claim", json={"runner_id": "r1", "lease_seconds": 5}).json()
    assert claim["started_at"].endswith("Z") and claim["lease_expires_at"].endswith("Z")  # as every answer's times
    beat = http.post(f"/api/agent/tasks/{task['id']}/heartbeat",
                     json={"claim_token": claim["claim_token"], "progress_pct": 50, "current_step": "half"})
    assert beat.status_code == 200 and beat.json()["progress_pct"] == 50
    wrong = http.post(f"/api/agent/tasks/{task['id']}/heartbeat", json={"claim_token": 99})
    assert wrong.status_code == 409 and "stale" in wrong.json()["detail"]
    runner = {"runner_id": "host:42", "host": "host", "pid": 42, "version": "0.1.0"}
    assert http.post("/api/agent/runners/heartbeat", json=runner).json()["last_seen"]
    assert http.post("/api/agent/runners/heartbeat", json={**runner, "pid": 0}).status_code == 422
    assert [r["id"] for r in http.get("/api/agent/runners").json()["items"]] == ["host:42"]
    http.post("/api/agent/tasks", json=TASK)
    both = http.post(f"/api/agent/tasks/{task['id']}/finish", json={
        "claim_token": claim["claim_token"], "status": "completed", "claim_next": {"runner_id": "r1"}}).json()
    assert both["finished"]["finished_at"].endswith("Z") and both["next"]["started_at"].endswith("Z")
    http.post("/api/agent/tasks", json=TASK)
    many = http.post("/api/agent/tasks/claim", json={"runner_id": "r1", "max_tasks": 2}).json()
    assert [t["created_at"][-1] for t in many["tasks"]] == ["Z"]


def test_expired_lease_goes_back_to_another_runner(tmp_path: Path) -> None:
    api = ServedApi(tmp_path / "home", env={"COHERENCE_LEASE_SECONDS": "1"}).start()  # the reaper's grace: 1 s
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            _expired_lease_goes_back_to_another_runner(http)
    finally:
        api.stop()


def _expired_lease_goes_back_to_another_runner(http: httpx.Client) -> None:
    task = http.post("/api/agent/tasks", json=TASK).json()
    first = http.post("/api/agent/tasks/claim", json={"runner_id": "dies", "lease_seconds": 0.3}).json()
    second = http.post("/api/agent/tasks/claim", json={"runner_id": "lives", "wait_seconds": 10}).json()
    assert second["id"] == task["id"] and second["attempts"] == 1 and second["claim_token"] > first["claim_token"]
    zombie = http.post(f"/api/agent/tasks/{task['id']}/finish",
                       json={"claim_token": first["claim_token"], "status": "failed"})
    assert zombie.status_code == 409
    metrics = http.get("/metrics").text
    assert "coherence_tasks_reclaimed_total 1.0" in metrics


def test_task_log_serves_the_file_or_the_stored_tail(http: httpx.Client, served_api: ServedApi) -> None:
    task = http.post("/api/agent/tasks", json=TASK).json()
    claim = http.post("/api/agent/tasks/claim", json={"runner_id": "r"}).json()
    http.post(f"/api/agent/tasks/{task['id']}/finish",
              json={"claim_token": claim["claim_token"], "status": "completed", "output": "tail only"})
    fallback = http.get(f"/api/agent/tasks/{task['id']}/log")
    assert fallback.text == "tail only" and fallback.headers["x-log-source"] == "stored-output-tail"
    log = served_api.home / "logs" / f"task_{task['id']}.log"
    log.write_text("line 1\nline 2\nline 3\n")
    assert http.get(f"/api/agent/tasks/{task['id']}/log").text == "line 1\nline 2\nline 3\n"
    assert http.get(f"/api/agent/tasks/{task['id']}/log", params={"tail": 1}).text == "line 3\n"


def test_prometheus_metrics(http: httpx.Client) -> None:
    http.post("/api/agent/tasks", json=TASK)
    text = http.get("/metrics").text
    assert 'coherence_tasks{status="pending"} 1.0' in text
    assert 'coherence_tasks_created_total{task_type="run"} 1.0' in text
    assert "coherence_oldest_pending_age_seconds" in text and "coherence_runners_seen 0.0" in text


def test_non_loopback_bind_without_token_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coherence_network.cli", "api", "--host", "0.0.0.0", "--port", str(free_port())],
        env={"COHERENCE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "COHERENCE_API_TOKEN" in done.stderr


def test_a_corrupt_database_stops_the_api_before_it_serves(tmp_path: Path) -> None:
    """One line naming the store and the cause, exit 2 (a store lost while serving is tests/integration/
    test_store_outage.py: health stays 200, ready says 503)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "coherence.db").write_bytes(b"this is not a database" * 100)
    env = {**os.environ, "COHERENCE_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "coherence_network.cli", "api", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("coherence: the store at DATABASE_URL=sqlite:///") and done.stderr.count("\n") == 1
    assert "file is not a database" in done.stderr


def test_acknowledged_tasks_survive_sigkill(tmp_path: Path) -> None:
    home = tmp_path / "home"
    api = ApiProcess(home).start()
    acknowledged: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(base_url=api.url, timeout=5) as http:
            while not stop.is_set():
                try:
                    response = http.post("/api/agent/tasks", json=TASK)
                except httpx.TransportError:
                    return
                if response.status_code == 201:
                    acknowledged.append(response.json()["id"])

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    api.kill()
    stop.set()
    for thread in threads:
        thread.join(10)
    assert len(acknowledged) >= 200
    restarted = ApiProcess(home, port=api.port).start()
    try:
        with httpx.Client(base_url=restarted.url, timeout=30) as http:
            listed = http.get("/api/agent/tasks", params={"limit": 500, "order": "oldest"}).json()["items"]
            stored = {t["id"] for t in listed}
            total = http.get("/api/agent/tasks/count").json()["total"]
            for offset in range(500, total, 500):
                page = http.get("/api/agent/tasks", params={"limit": 500, "offset": offset, "order": "oldest"}).json()
                stored |= {t["id"] for t in page["items"]}
        assert set(acknowledged) <= stored
    finally:
        restarted.stop()
