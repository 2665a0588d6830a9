"""Pause, drain, resume (issue 21 item 3) on both stores: a paused scope is handed out by no claim path, running
work finishes, resuming hands it out again, and the pause is stored."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.store import TaskStore
from tests.support.api import ServedApi
from tests.support.net import free_port
from tests.support.waiting_claim import WaitingClaim

CLI = [sys.executable, "-m", "coherence_network.cli"]


@pytest.fixture(scope="module")
def http_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    """One served API on SQLite for the module's HTTP and CLI checks (each leaves nothing paused)."""
    api = ServedApi(tmp_path_factory.mktemp("pauses") / "home").start()
    yield api
    api.stop()


def test_a_paused_type_is_claimed_by_no_path_while_others_are(store: TaskStore) -> None:
    impl = store.create(direction="impl", task_type="impl", priority=5)
    spec = store.create(direction="spec", task_type="spec")
    store.pause("impl", "cli:ops", "provider down")
    assert store.claim("r1", types=["impl"]) is None
    assert [t["id"] for t in store.claim_many("r1", 5)] == [spec["id"]]
    other = store.create(direction="spec 2", task_type="spec")
    _, following = store.finish_and_claim(spec["id"], 1, status="completed", runner_id="r1")
    assert following is not None and following["id"] == other["id"]
    done, following = store.finish_and_claim(other["id"], 1, status="completed", runner_id="r1", types=["impl"])
    assert done["status"] == "completed" and following is None
    assert store.get(impl["id"])["status"] == "pending"
    assert store.resume("impl", "test:op") is not None
    assert store.claim("r2")["id"] == impl["id"]


def test_pause_all_holds_every_type_and_running_work_drains(store: TaskStore) -> None:
    running = store.create(direction="runs", task_type="run")
    claimed = store.claim("r1")
    assert claimed["id"] == running["id"]
    store.create(direction="waits", task_type="spec")
    pause, created = store.pause("all", "cli:ops", "maintenance")
    assert created and pause["scope"] == "all" and pause["by"] == "cli:ops"
    assert store.claim_many("r2", 3) == []
    assert store.heartbeat(running["id"], claimed["claim_token"])["status"] == "running"
    assert store.finish(running["id"], claimed["claim_token"], status="completed")["status"] == "completed"
    assert store.resume("all", "test:op")["reason"] == "maintenance"
    assert store.claim("r2")["direction"] == "waits"


def test_pausing_again_keeps_the_first_pause_and_resume_is_idempotent(store: TaskStore) -> None:
    first, created = store.pause("spec", "cli:a", "first")
    again, created_again = store.pause("spec", "cli:b", "second")
    assert created and not created_again
    assert (again["since"], again["by"], again["reason"]) == (first["since"], "cli:a", "first")
    assert [p["scope"] for p in store.pauses()] == ["spec"]
    assert store.resume("spec", "test:op") is not None
    assert store.resume("spec", "test:op") is None and store.pauses() == []


def test_an_unknown_scope_is_refused(store: TaskStore) -> None:
    with pytest.raises(ValueError, match="scope must be one of"):
        store.pause("bogus", "cli:a", "why")
    with pytest.raises(ValueError):
        store.resume("bogus", "test:op")


def test_the_pause_is_stored_for_another_store_on_the_database(store: TaskStore, store_engine: Engine) -> None:
    store.pause("heal", "cli:a", "kept")
    assert [p["reason"] for p in TaskStore(store_engine).pauses()] == ["kept"]


def test_a_resume_wakes_waiting_claims(store: TaskStore) -> None:
    woke: list[bool] = []
    store.on_work = lambda: woke.append(True)
    store.pause("run", "cli:a", "hold")
    assert woke == []
    store.resume("run", "test:op")
    assert woke == [True]


def test_pause_drain_resume_over_http_and_a_restart_keeps_it(migrated_store_url: str, tmp_path: Path) -> None:
    # Rechecks once a minute: a waiting claim that gets work within seconds was woken by the resume.
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": migrated_store_url,
                                            "COHERENCE_CLAIM_RECHECK_SECONDS": "60"}).start()
    try:
        client = ApiClient(base_url=api.url, retries=0)
        impl = client.create_task("impl", TaskType.IMPL, priority=5)
        client.create_task("spec", TaskType.SPEC)
        first = client.pause("cli:alice", "provider down", task_type=TaskType.IMPL)
        again = client.pause("cli:bob", "other reason", task_type=TaskType.IMPL)
        assert first.changed and not again.changed and again.pause == first.pause
        assert client.claim("r1", types=[TaskType.IMPL]) is None
        running = client.claim("r1")
        assert running is not None and running.task_type == TaskType.SPEC

        status = client.pipeline_status()
        assert [(p.scope, p.by, p.reason) for p in status.pauses] == [("impl", "cli:alice", "provider down")]
        flag = next(f for f in status.attention if f.rule == "paused")
        assert flag.severity == "medium" and flag.command == "coherence resume --type impl"
        assert "impl since" in flag.message and "cli:alice" in flag.message and "provider down" in flag.message
        metrics = httpx.get(f"{api.url}/metrics").text
        assert 'coherence_paused{type="impl"} 1.0' in metrics and 'coherence_paused{type="all"} 0.0' in metrics

        client.pause("cli:alice", "maintenance")  # the whole pipeline: the running task still finishes (drain)
        client.create_task("spec 2", TaskType.SPEC)
        assert client.claim_many("r1", 3) == []
        finished, following = client.finish_and_claim(running.id, running.claim_token, TaskStatus.COMPLETED,
                                                       runner_id="r1")
        assert finished.status == TaskStatus.COMPLETED and following is None
        api.stop()
        api.start()  # a restart keeps the pauses
        assert [p.scope for p in client.pauses().pauses] == ["impl", "all"]
        assert client.claim("r1") is None
        assert client.resume("cli:alice").changed
        spec = client.claim("r1")  # the pipeline runs again; impl stays held by its own pause
        assert spec is not None and spec.direction == "spec 2" and client.claim("r1") is None

        waiting = WaitingClaim(client, api, "r2", [TaskType.IMPL]).start()
        assert client.resume("cli:alice", task_type=TaskType.IMPL).changed
        got = waiting.result()
        assert got is not None and got.id == impl.id
        assert waiting.waited < 10  # woken by the resume, not by the minute's recheck
        assert not client.resume("cli:alice", task_type=TaskType.IMPL).changed and client.pauses().pauses == []
        client.close()
    finally:
        api.stop()


@pytest.mark.parametrize("body", [
    {"by": "cli:a", "reason": ""},
    {"by": "cli:a", "reason": "why", "type": "bogus"},
    {"reason": "no actor"},
    {"by": "", "reason": "why"},
    {"by": "x" * 201, "reason": "why"},
])
def test_bad_pause_requests_are_refused_with_422(http_api: ServedApi, body: dict[str, str]) -> None:
    assert httpx.post(f"{http_api.url}/api/agent/pause", json=body).status_code == 422
    assert httpx.get(f"{http_api.url}/api/agent/pauses").json() == {"pauses": []}


def _coherence(api_url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COHERENCE_HOME": str(home), "AGENT_API_BASE": api_url, "COHERENCE_HTTP_TIMEOUT": "5",
           "NO_COLOR": "1"}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_coherence_pause_status_and_resume_end_to_end(http_api: ServedApi) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    paused = _coherence(http_api.url, http_api.home, "pause", "--type", "impl", "--reason", "provider down")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith("paused impl since") and f"by cli:{user}: provider down" in paused.stdout
    again = _coherence(http_api.url, http_api.home, "pause", "--type", "impl", "--reason", "again")
    assert again.returncode == 0 and "already paused" in again.stdout and "provider down" in again.stdout
    status = _coherence(http_api.url, http_api.home, "status")
    assert status.returncode == 0, status.stdout  # a deliberate pause is a warning, not a fault
    assert "paused" in status.stdout and "coherence resume --type impl" in status.stdout
    empty = _coherence(http_api.url, http_api.home, "pause", "--reason", "")
    assert empty.returncode == 2 and "--reason" in empty.stderr and len(empty.stderr.strip().splitlines()) == 1
    unknown = _coherence(http_api.url, http_api.home, "pause", "--type", "bogus", "--reason", "why")
    assert unknown.returncode == 2
    resumed = _coherence(http_api.url, http_api.home, "resume", "--type", "impl")
    assert resumed.returncode == 0 and resumed.stdout.startswith("resumed impl (it was paused impl since")
    nothing = _coherence(http_api.url, http_api.home, "resume")
    assert nothing.returncode == 0 and "all was not paused" in nothing.stdout
    unreachable = _coherence(f"http://127.0.0.1:{free_port()}", http_api.home, "resume")
    assert unreachable.returncode == 2 and "unreachable" in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1
