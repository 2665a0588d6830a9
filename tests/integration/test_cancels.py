"""Cancel (issue 21 item 1) on both stores: pending and waiting tasks settle at once, a running one is marked for its
runner, a settled one is a conflict naming its status, a repeat is safe, and each cancel is one audit record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from coherence_network.cli.api_access import os_user
from coherence_network.client import ApiClient
from coherence_network.clock import utcnow
from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine
from coherence_network.store.errors import Conflict, NotFound
from coherence_network.store.schema import audit
from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.runner import RunnerProcess, group_gone, task_group

CLI = [sys.executable, "-m", "coherence_network.cli"]


def audit_rows(engine: Engine, task_id: int) -> list[dict[str, Any]]:
    """The audit trail of one task, oldest first (read from the store: GET /api/audit is another part's)."""
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            sa.select(audit).where(audit.c.task_id == task_id).order_by(audit.c.id))]


def served_audit_rows(api: ServedApi, task_id: int) -> list[dict[str, Any]]:
    """``audit_rows`` of a served API's store."""
    assert api.app is not None
    engine = create_store_engine(api.app.state.settings.store_url)
    try:
        return audit_rows(engine, task_id)
    finally:
        engine.dispose()


def test_a_pending_task_is_cancelled_at_once_once(store: TaskStore, store_engine: Engine) -> None:
    task = store.create(direction="never mind", task_type="spec")
    cancelled = store.cancel(task["id"], "cli:alice", "wrong direction")
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert (cancelled["cancelled_by"], cancelled["cancel_reason"]) == ("cli:alice", "wrong direction")
    assert cancelled["error_category"] == "cancelled"
    assert cancelled["error_summary"] == "cancelled by cli:alice: wrong direction"
    assert cancelled["cancel_requested_at"] is None
    again = store.cancel(task["id"], "cli:bob", "me too")
    assert (again["status"], again["cancelled_by"]) == ("cancelled", "cli:alice")
    assert store.claim("r1") is None
    [record] = audit_rows(store_engine, task["id"])
    assert (record["actor"], record["channel"], record["action"], record["reason"]) == (
        "cli:alice", "cli", "cancel", "wrong direction")
    assert (record["status_before"], record["status_after"]) == ("pending", "cancelled")


def test_a_waiting_task_is_cancelled_and_a_decision_then_conflicts(store: TaskStore, store_engine: Engine) -> None:
    store.create(direction="asks", task_type="impl")
    claimed = store.claim("r1")
    store.finish(claimed["id"], claimed["claim_token"], status="needs_decision", decision_prompt="go on?")
    cancelled = store.cancel(claimed["id"], "telegram:bob", "no longer needed")
    assert (cancelled["status"], cancelled["claimed_by"]) == ("cancelled", None)
    with pytest.raises(Conflict, match="its status is cancelled"):
        store.decide(claimed["id"], "yes", "console:ops")
    assert [r["status_before"] for r in audit_rows(store_engine, claimed["id"])] == ["needs_decision"]


def test_a_running_task_is_marked_and_settles_when_its_runner_finishes(store: TaskStore, store_engine: Engine) -> None:
    store.create(direction="sleep 300", task_type="run", command="sleep 300")
    claimed = store.claim("r1")
    token = claimed["claim_token"]
    with pytest.raises(Conflict, match="no cancel was requested"):
        store.finish(claimed["id"], token, status="cancelled")
    asked = store.cancel(claimed["id"], "console:ops", "runaway")
    assert asked["status"] == "running" and asked["cancel_requested_at"] is not None
    assert store.heartbeat(claimed["id"], token)["cancel_requested_at"] == asked["cancel_requested_at"]
    assert store.cancel(claimed["id"], "cli:other", "again")["cancelled_by"] == "console:ops"
    done = store.finish(claimed["id"], token, status="cancelled", output="partial\n", exit_code=-15)
    assert (done["status"], done["output"], done["error_category"]) == ("cancelled", "partial\n", "cancelled")
    assert done["error_summary"] == "cancelled by console:ops: runaway" and done["attempts"] == 0
    assert store.finish(claimed["id"], token, status="cancelled")["status"] == "cancelled"  # a lost answer, retried
    [record] = audit_rows(store_engine, claimed["id"])
    assert (record["status_before"], record["status_after"], record["actor"]) == ("running", "running", "console:ops")


def test_a_release_after_a_cancel_request_settles_it(store: TaskStore) -> None:
    store.create(direction="runs", task_type="run", command="true")
    claimed = store.claim("r1")
    store.cancel(claimed["id"], "api", "stop")
    released = store.finish(claimed["id"], claimed["claim_token"], status="pending")
    assert released["status"] == "cancelled" and store.claim("r2") is None


def test_settled_tasks_conflict_naming_their_status_and_unknown_ones_are_not_found(store: TaskStore) -> None:
    store.create(direction="done", task_type="run", command="true")
    claimed = store.claim("r1")
    store.finish(claimed["id"], claimed["claim_token"], status="completed")
    with pytest.raises(Conflict, match="its status is completed") as caught:
        store.cancel(claimed["id"], "cli:alice", "too late")
    assert caught.value.current_status == "completed"
    with pytest.raises(NotFound):
        store.cancel(999_999, "cli:alice", "nothing")


def test_retry_brings_a_cancelled_task_back_without_its_cancel(store: TaskStore, store_engine: Engine) -> None:
    task = store.create(direction="again", task_type="spec")
    store.cancel(task["id"], "cli:alice", "later")
    back = store.retry(task["id"], actor="cli:alice", reason="now")
    assert back["status"] == "pending"
    assert (back["cancelled_by"], back["cancel_reason"], back["cancel_requested_at"]) == (None, None, None)
    assert store.claim("r1")["id"] == task["id"]
    assert [(r["action"], r["status_before"]) for r in audit_rows(store_engine, task["id"])] == [
        ("cancel", "pending"), ("retry", "cancelled")]


def test_a_dead_runners_cancelled_task_is_reaped_as_cancelled_not_requeued(store: TaskStore) -> None:
    store.create(direction="asked", task_type="run", command="sleep 300")
    store.create(direction="plain", task_type="run", command="sleep 300")
    asked, plain = store.claim_many("r1", 2)
    store.cancel(asked["id"], "cli:alice", "stop it")
    result = store.reap(utcnow() + timedelta(seconds=store.lease_seconds + 1))
    assert (result.cancelled, result.reclaimed) == (1, 1)
    reaped = store.get(asked["id"])
    assert (reaped["status"], reaped["error_category"], reaped["attempts"]) == ("cancelled", "cancelled", 0)
    assert store.get(plain["id"])["status"] == "pending"


# --- end to end: a real runner, the CLI ------------------------------------------------------------------------
LEASE, GRACE = 3.0, 2.0  # the runner renews every LEASE / 3 s: a cancel reaches it within that


@pytest.fixture(scope="module")
def cancel_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    """One served API on SQLite for the module's runner and CLI checks, with a short lease."""
    api = ServedApi(tmp_path_factory.mktemp("cancels") / "home", env={"COHERENCE_LEASE_SECONDS": str(LEASE)}).start()
    yield api
    api.stop()


def cli(api: ServedApi, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COHERENCE_HOME": str(api.home), "AGENT_API_BASE": api.url}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_a_running_sleep_cancelled_from_the_cli_is_gone_within_the_grace(cancel_api: ServedApi) -> None:
    """The issue's "done when": the whole group is gone within a lease renewal plus the kill grace, the task is
    cancelled with its output so far, and the audit trail names the operator and the reason."""
    client = ApiClient(cancel_api.url, retries=0)
    task = client.create_task("sleep by mistake", "run", command="sleep 300")
    proc = RunnerProcess(cancel_api.home, cancel_api.url, env={"AGENT_KILL_GRACE_SECONDS": str(GRACE)}).start()
    try:
        wait_until(lambda: task_group(cancel_api.home, task.id) is not None, 30, "task running")
        pgid = task_group(cancel_api.home, task.id)
        assert pgid is not None and not group_gone(pgid)
        asked = cli(cancel_api, "cancel", str(task.id), "--reason", "sleep 300 by mistake")
        assert asked.returncode == 0, asked.stderr
        assert f"task {task.id} is running: cancel requested by cli:{os_user()}" in asked.stdout
        wait_until(lambda: group_gone(pgid), LEASE / 3 + GRACE + 2, "process group gone")
        wait_until(lambda: client.get_task(task.id).status == "cancelled", 10, "task cancelled")
        done = client.get_task(task.id)
        assert (done.cancelled_by, done.cancel_reason, done.error_category) == (
            f"cli:{os_user()}", "sleep 300 by mistake", "cancelled")
        assert done.exit_code == -15 and done.attempts == 0
        assert f"=== cancelled by cli:{os_user()}: sleep 300 by mistake: stopping the process group" in done.output
        log = (cancel_api.home / "logs" / f"task_{task.id}.log").read_text()
        assert "status=cancelled" in log
        [record] = [r for r in served_audit_rows(cancel_api, task.id) if r["action"] == "cancel"]
        assert (record["actor"], record["reason"], record["status_before"]) == (
            f"cli:{os_user()}", "sleep 300 by mistake", "running")
        again = cli(cancel_api, "cancel", str(task.id), "--reason", "again", "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["status"] == "cancelled"
        assert proc.proc is not None and proc.proc.poll() is None  # the runner goes on
    finally:
        proc.stop()
        client.close()


def test_the_cli_refuses_a_cancel_without_reason_and_of_a_settled_task(cancel_api: ServedApi) -> None:
    with ApiClient(cancel_api.url, retries=0) as client:
        task = client.create_task("done already", "spec")
        client.cancel(task.id, "first", by="test:op")
    missing = cli(cancel_api, "cancel", str(task.id))
    assert missing.returncode == 2 and "--reason" in missing.stderr
    with ApiClient(cancel_api.url, retries=0) as client:
        client.retry_task(task.id)
        claimed = client.claim("r1", types=["spec"])
        assert claimed is not None and claimed.id == task.id
        client.finish(task.id, claimed.claim_token, "completed")
    refused = cli(cancel_api, "cancel", str(task.id), "--reason", "too late")
    assert refused.returncode == 1 and "not cancelled: cannot cancel" in refused.stderr
    assert "its status is completed" in refused.stderr


def test_the_endpoint_takes_the_actor_header_and_bounds_the_reason(cancel_api: ServedApi) -> None:
    with ApiClient(cancel_api.url, retries=0, actor="telegram:42") as client:
        task = client.create_task("by header", "spec")
        assert client.cancel(task.id, "no longer needed").cancelled_by == "telegram:42"
    with httpx.Client(base_url=cancel_api.url) as http:
        other = http.post("/api/agent/tasks", json={"direction": "plain", "task_type": "spec"}).json()
        assert http.post(f"/api/agent/tasks/{other['id']}/cancel", json={"reason": ""}).status_code == 422
        assert http.post(f"/api/agent/tasks/{other['id']}/cancel", json={"reason": "x" * 501}).status_code == 422
        answer = http.post(f"/api/agent/tasks/{other['id']}/cancel", json={"reason": "plain"})
        assert answer.status_code == 200 and answer.json()["cancelled_by"] == "api"
