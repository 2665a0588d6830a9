"""Replicas for real (issue 14): two `coherence api` processes on one PostgreSQL, runners split across them.

Each replica rechecks the store only every 60 s (COHERENCE_CLAIM_RECHECK_SECONDS) and runner B long-polls for 60 s,
so a task created on A reaches runner B within seconds only if B's wake-up listener heard A's NOTIFY.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus, TaskType
from tests.support.api import ApiProcess
from tests.support.net import wait_until
from tests.support.postgres import PostgresServer
from tests.support.runner import RunnerProcess

RECHECK_SECONDS = 60  # far beyond every wait below: only a wake-up can explain a quick dispatch
DISPATCH_SECONDS = 10
TASKS_PER_SIDE = 12


class Cluster:
    """Replicas A and B; runner "a" (run tasks) on A, runner "b" (review tasks) on B."""

    def __init__(self, a: ApiProcess, b: ApiProcess, client_a: ApiClient, client_b: ApiClient) -> None:
        self.a, self.b, self.client_a, self.client_b = a, b, client_a, client_b


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    commands = {"COHERENCE_COMMAND_TASK_TYPES": "run,review"}  # review tasks here carry commands, not an agent
    env = {"DATABASE_URL": postgres_server.new_database(migrated=True),
           "COHERENCE_CLAIM_RECHECK_SECONDS": str(RECHECK_SECONDS), "COHERENCE_COUNT_CACHE_SECONDS": "3600", **commands}
    a = ApiProcess(root / "a", env=env).start()
    b = ApiProcess(root / "b", env=env).start()
    runners = [
        RunnerProcess(root / "runner-a", a.url, "--runner-id", "a", "--types", TaskType.RUN, "--workers", "2"),
        RunnerProcess(root / "runner-b", b.url, "--runner-id", "b", "--types", TaskType.REVIEW, "--workers", "2",
                      "--interval", str(RECHECK_SECONDS), env=commands),
    ]
    client_a, client_b = ApiClient(a.url, token=""), ApiClient(b.url, token="")
    try:
        for runner in runners:
            runner.start()
        wait_until(lambda: {r["id"] for r in client_a.get("/api/agent/runners")["items"]} == {"a", "b"}, 60,
                   "both runners registered")
        yield Cluster(a, b, client_a, client_b)
    finally:
        for runner in runners:
            runner.stop()
        client_a.close()
        client_b.close()
        a.stop()
        b.stop()


def _task(client: ApiClient, task_type: TaskType, name: str) -> int:
    command = f"{sys.executable} -c 'print(\"ran {name}\")'"
    return client.create_task(name, task_type, command=command).id


def _done(client: ApiClient, ids: list[int]) -> bool:
    return all(client.get_task(i).status is TaskStatus.COMPLETED for i in ids)


def test_tasks_created_on_a_run_once_each_through_both_replicas(cluster: Cluster) -> None:
    ids = {task_type: [_task(cluster.client_a, task_type, f"{task_type} {n}") for n in range(TASKS_PER_SIDE)]
           for task_type in (TaskType.RUN, TaskType.REVIEW)}
    every = ids[TaskType.RUN] + ids[TaskType.REVIEW]
    wait_until(lambda: _done(cluster.client_b, every), 120, "every task completed")
    for task_type, runner in ((TaskType.RUN, "a"), (TaskType.REVIEW, "b")):
        for task_id in ids[task_type]:
            task = cluster.client_b.get_task(task_id)
            # one claim each (token 1), never a failed or expired attempt, by the runner of its replica
            assert (task.claim_token, task.attempts, task.claimed_by) == (1, 0, runner), task
            assert (task.output or "").strip() == f"ran {task.direction}"


def test_a_runner_waiting_on_b_gets_a_task_created_on_a_by_wake_up(cluster: Cluster) -> None:
    for n in range(5):  # after the first, runner b is back in its 60 s long poll when the next task is made
        task_id = _task(cluster.client_a, TaskType.REVIEW, f"wake {n}")
        wait_until(lambda t=task_id: _done(cluster.client_a, [t]), DISPATCH_SECONDS, f"task {task_id} run through B")
        assert cluster.client_a.get_task(task_id).claimed_by == "b"


def test_a_create_on_one_replica_refreshes_the_others_cached_count(cluster: Cluster) -> None:
    total = cluster.client_a.get("/api/agent/tasks/count")["total"]  # cached on A for an hour from now
    cluster.client_b.create_task("nobody runs spec tasks here", TaskType.SPEC)
    wait_until(lambda: cluster.client_a.get("/api/agent/tasks/count")["total"] == total + 1, DISPATCH_SECONDS,
               "A's count to follow B's create")


def test_wake_ups_resume_after_the_database_restarts(cluster: Cluster, postgres_server: PostgresServer) -> None:
    postgres_server.stop()  # immediate: every connection, B's listening one too, is cut
    postgres_server.resume()
    log_b = cluster.b.home / "logs" / "api.log"
    # B reconnects (backoff doubling from 0.5 s) and, having missed notifications meanwhile, wakes its waiters
    wait_until(lambda: "wake-up listener connected again" in log_b.read_text(), 60, "B's listener back")
    assert "wake-up listener lost the database" in log_b.read_text()
    task_id = _task(cluster.client_a, TaskType.REVIEW, "after the restart")
    wait_until(lambda: _done(cluster.client_a, [task_id]), DISPATCH_SECONDS, f"task {task_id} run through B")
