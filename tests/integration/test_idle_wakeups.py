"""Waiting costs nothing (issue 14): an idle long poll writes nothing to SQLite, and only a write that changed a
task makes the cached count stale."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import httpx

from coherence_network.api.signals import WorkSignal
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine, migrate
from tests.support.api import ServedApi

WAITERS = 8


def _store_files(home: Path) -> dict[str, bytes]:
    """The database and its write-ahead log, byte for byte (the -shm index is shared memory, not data)."""
    return {path.name: path.read_bytes() for path in sorted(home.glob("coherence.db*"))
            if not path.name.endswith(("-shm", ".lock"))}


def _long_polls(url: str, seconds: float) -> list[int]:
    """WAITERS claims waiting ``seconds`` at once; their status codes."""
    codes: list[int] = []

    def wait() -> None:
        with httpx.Client(base_url=url, timeout=seconds + 10) as client:
            body = {"runner_id": "idle", "wait_seconds": seconds, "types": [TaskType.RUN]}
            try:
                codes.append(client.post("/api/agent/tasks/claim", json=body).status_code)
            except httpx.TimeoutException:
                codes.append(0)  # held past its wait: it was stuck on a lock

    threads = [threading.Thread(target=wait) for _ in range(WAITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    return codes


def test_an_idle_long_poll_writes_nothing_and_needs_no_write_lock_on_sqlite(tmp_path: Path) -> None:
    # Rechecking the store ten times a second makes any write a recheck does show up within the test.
    api = ServedApi(tmp_path / "home", env={"COHERENCE_CLAIM_RECHECK_SECONDS": "0.1"}).start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            http.post("/api/agent/tasks", json={"direction": "not for these waiters", "task_type": TaskType.SPEC})
            before = _store_files(api.home)
            writer = sqlite3.connect(api.home / "coherence.db", isolation_level=None)
            writer.execute("BEGIN IMMEDIATE")  # a long write elsewhere: a claim that needed the lock would block
            try:
                assert _long_polls(api.url, 2.0) == [204] * WAITERS
            finally:
                writer.execute("ROLLBACK")
                writer.close()
            assert _store_files(api.home) == before
            # the comparison sees writes: a claimed task changes the file
            http.post("/api/agent/tasks", json={"direction": "for them", "task_type": TaskType.RUN})
            assert http.post("/api/agent/tasks/claim", json={"runner_id": "r"}).status_code == 200
            assert _store_files(api.home) != before
    finally:
        api.stop()


def test_only_a_write_that_changed_a_task_makes_the_count_cache_stale(migrated_store_url: str) -> None:
    engine = create_store_engine(migrated_store_url)
    migrate(engine)
    cached = TaskStore(engine, count_cache_seconds=3600)
    other = TaskStore(engine)  # another API replica on the same database
    assert cached.count()["total"] == 0
    task = other.create(direction="theirs", task_type=TaskType.SPEC)
    assert cached.claim("r", types=[TaskType.RUN]) is None  # found nothing: changed nothing
    cached.runner_heartbeat("r", host="h", pid=1, version="v")  # the runner registry holds no task
    cached.reap()  # no lease expired
    assert cached.count()["total"] == 0  # so the cached answer stands
    claimed = cached.claim("r")
    assert claimed is not None and claimed["id"] == task["id"]
    assert cached.count()["by_status"][TaskStatus.RUNNING] == 1
    engine.dispose()


def test_a_waiting_claim_whose_client_went_away_claims_nothing(tmp_path: Path) -> None:
    api = ServedApi(tmp_path / "home", env={"COHERENCE_CLAIM_RECHECK_SECONDS": "60"}).start()
    try:
        with httpx.Client(base_url=api.url, timeout=1) as gone:
            try:
                gone.post("/api/agent/tasks/claim", json={"runner_id": "gone", "wait_seconds": 30})
            except httpx.TimeoutException:
                pass  # the client gives up and closes its connection while the API holds the claim
        with httpx.Client(base_url=api.url, timeout=30) as http:
            created = http.post("/api/agent/tasks", json={"direction": "d", "task_type": TaskType.RUN,
                                                          "command": "true"}).json()
            claimed = http.post("/api/agent/tasks/claim", json={"runner_id": "here"}).json()
            assert (claimed["id"], claimed["claimed_by"]) == (created["id"], "here")
    finally:
        api.stop()


def test_one_wake_up_wakes_one_waiting_claim_and_none_is_lost() -> None:
    """Waking every waiter for each task would cost a claim per idle runner per task (the herd)."""

    async def scenario() -> None:
        signal, never = WorkSignal(), asyncio.get_running_loop().create_future()
        waits = [asyncio.ensure_future(signal.wait(30, never)) for _ in range(3)]
        await asyncio.sleep(0)  # all three are waiting
        signal.notify()
        done, _ = await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert done == {waits[0]}  # the one waiting longest, told it may pass the wake-up on (3 were waiting)
        assert waits[0].result() == 3
        signal.notify_all()
        assert [await w for w in waits[1:]] == [0, 0]
        signal.notify(1)  # nobody waits: kept for the next claim that does
        assert await signal.wait(30, never) == 1
        assert await signal.wait(0.01, never) is None

    asyncio.run(scenario())
