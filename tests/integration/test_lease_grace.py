"""Downtime is not death: when the API could not hear renewals (the store was down longer than a lease, or the API
itself was frozen longer than a lease), healthy running tasks are not run again and their results are accepted.

Before, the reaper's one-lease grace applied only when the API started: after a PostgreSQL outage it requeued every
lease in the same millisecond (results that finished meanwhile were dropped and run again), and a `kill -STOP` of
the API re-ran every healthy task."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.support.api import ApiProcess, ServedApi
from tests.support.net import wait_until
from tests.support.postgres import PostgresServer
from tests.support.runner import RunnerProcess

LEASE = 2.0
# Each run records its start, then works until the test releases it (a file), so the test decides when it ends.
TASK_PROGRAM = """
import os, sys, time
folder, task = sys.argv[1], os.environ["COHERENCE_TASK_ID"]
with open(os.path.join(folder, "starts_" + task), "a") as starts:
    starts.write("start\\n")
while not os.path.exists(os.path.join(folder, "release_" + task)):
    time.sleep(0.05)
print("done " + task)
"""


class Pipeline:
    """An API and one runner with several slots, running tasks that each wait for their release file."""

    def __init__(self, folder: Path, api: ApiProcess | ServedApi) -> None:
        self.folder, self.api = folder, api
        self.program = folder / "task.py"
        self.program.write_text(TASK_PROGRAM)
        self.http = httpx.Client(base_url=api.url, timeout=10)
        self.runner = RunnerProcess(api.home, api.url, "--workers", "3", "--interval", "1")

    def create(self, count: int) -> list[int]:
        command = f"{sys.executable} {self.program} {self.folder}"
        return [self.http.post("/api/agent/tasks", json={"direction": f"t{i}", "task_type": "run",
                                                         "command": command}).json()["id"] for i in range(count)]

    def starts(self, task: int) -> int:
        path = self.folder / f"starts_{task}"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def release(self, task: int) -> None:
        (self.folder / f"release_{task}").touch()

    def task(self, task: int) -> dict:
        return self.http.get(f"/api/agent/tasks/{task}").json()

    def renewed_since(self, tasks: list[int], moment: datetime) -> bool:
        """Every task's lease was renewed after ``moment``: its runner heartbeat got through."""
        for task in tasks:
            expires = self.task(task)["lease_expires_at"]
            if expires is None or datetime.fromisoformat(expires) - moment < timedelta(seconds=LEASE * 0.5):
                return False
        return True

    def all_completed(self, tasks: list[int]) -> bool:
        return all(self.task(task)["status"] == "completed" for task in tasks)

    def assert_each_ran_once_and_was_accepted(self, tasks: list[int]) -> None:
        for task in tasks:
            done = self.task(task)
            assert self.starts(task) == 1, f"task {task} ran {self.starts(task)} times"
            assert done["status"] == "completed" and done["attempts"] == 0 and f"done {task}" in done["output"]
        log = (self.api.home / "logs" / "api.log").read_text(encoding="utf-8")
        assert "expired leases back to pending" not in log
        assert "coherence_tasks_reclaimed_total 0.0" in self.http.get("/metrics").text

    def close(self) -> None:
        self.runner.stop()
        self.http.close()


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def pg_server() -> Iterator[PostgresServer]:
    """A private server: this test stops and restarts it."""
    root = Path(tempfile.mkdtemp(prefix="coherence-pg-grace-"))
    server = PostgresServer(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_a_store_outage_longer_than_the_lease_reruns_nothing(tmp_path: Path, pg_server: PostgresServer) -> None:
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": pg_server.new_database(),
                                            "COHERENCE_LEASE_SECONDS": str(LEASE)}).start()
    pipeline = Pipeline(tmp_path, api)
    try:
        finishes_in_outage, *outlive_it = tasks = pipeline.create(3)
        pipeline.runner.start()
        wait_until(lambda: all(pipeline.starts(t) for t in tasks), 30, "three tasks running")
        log = api.home / "logs" / "api.log"
        pg_server.stop()
        down = time.monotonic()
        wait_until(lambda: "store unavailable to the lease reaper" in log.read_text(encoding="utf-8"), 30, "outage")
        pipeline.release(finishes_in_outage)  # its result waits in the runner's outbox
        time.sleep(max(0.0, down + LEASE * 1.75 - time.monotonic()))  # the outage outlasts every lease
        pg_server.resume()
        back = _now()
        wait_until(lambda: "store available again" in log.read_text(encoding="utf-8"), 30, "the store back")
        wait_until(lambda: pipeline.renewed_since(outlive_it, back), 30, "leases renewed after the outage")
        time.sleep(LEASE + 0.5)  # the reaper's hold is over: a lease it still took for dead would be requeued now
        for task in outlive_it:
            pipeline.release(task)
        wait_until(lambda: pipeline.all_completed(tasks), 30, "every task completed")
        pipeline.assert_each_ran_once_and_was_accepted(tasks)
        assert "no expired lease is requeued for 2 s, so runners renew first" in log.read_text(encoding="utf-8")
    finally:
        pipeline.close()
        api.stop()


def test_an_api_frozen_longer_than_the_lease_reruns_nothing(tmp_path: Path) -> None:
    """SIGSTOP: the store answers all along, but nobody in the API hears the runners; the reaper's own clock says
    its pass came late."""
    api = ApiProcess(tmp_path / "home", env={"COHERENCE_LEASE_SECONDS": str(LEASE)}).start()
    pipeline = Pipeline(tmp_path, api)
    try:
        tasks = pipeline.create(3)
        pipeline.runner.start()
        wait_until(lambda: all(pipeline.starts(t) for t in tasks), 30, "three tasks running")
        assert api.proc is not None
        os.kill(api.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(LEASE * 1.75)  # frozen longer than every lease
        finally:
            os.kill(api.proc.pid, signal.SIGCONT)
        back = _now()
        wait_until(lambda: pipeline.renewed_since(tasks, back), 30, "leases renewed after the freeze")
        time.sleep(LEASE + 0.5)  # the reaper's hold is over
        for task in tasks:
            pipeline.release(task)
        wait_until(lambda: pipeline.all_completed(tasks), 30, "every task completed")
        pipeline.assert_each_ran_once_and_was_accepted(tasks)
        api_log = (api.home / "logs" / "api.log").read_text(encoding="utf-8")
        assert "late (was the API stopped, starved or its host suspended?)" in api_log
    finally:
        pipeline.close()
        api.stop()
