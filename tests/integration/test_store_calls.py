"""The runners' calls on SQLite run on the event loop, with no hop to a thread, unless another writer holds the
write lock: then they wait in a thread, and the loop goes on answering everyone else (issue 23)."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

import httpx

from coherence_network.contract import TaskStatus, TaskType
from tests.support.api import ServedApi
from tests.support.net import wait_until

TASK = {"direction": "d", "task_type": TaskType.RUN, "command": "true"}


def _calls(http: httpx.Client) -> dict[str, float]:
    """coherence_store_calls_total by ran_on, from /metrics."""
    found = re.findall(r'^coherence_store_calls_total\{ran_on="(\w+)"\} (\S+)$', http.get("/metrics").text, re.M)
    return {where: float(value) for where, value in found}


def test_the_runners_calls_run_on_the_event_loop_and_wait_in_a_thread_only_for_the_lock(tmp_path: Path) -> None:
    api = ServedApi(tmp_path / "home").start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            http.post("/api/agent/tasks", json=TASK).raise_for_status()
            claimed = http.post("/api/agent/tasks/claim", json={"runner_id": "r"}).json()
            http.post(f"/api/agent/tasks/{claimed['id']}/heartbeat",
                      json={"claim_token": claimed["claim_token"]}).raise_for_status()
            http.post(f"/api/agent/tasks/{claimed['id']}/finish", json={
                "claim_token": claimed["claim_token"], "status": TaskStatus.COMPLETED, "exit_code": 0,
                "claim_next": {"runner_id": "r"}}).raise_for_status()
            assert _calls(http) == {"event_loop": 4.0}  # create, claim, heartbeat, finish with claim_next

            writer = sqlite3.connect(api.home / "coherence.db", isolation_level=None)
            writer.execute("BEGIN IMMEDIATE")  # a long write elsewhere holds the lock
            answers: list[httpx.Response] = []
            creating = threading.Thread(target=lambda: answers.append(
                httpx.post(f"{api.url}/api/agent/tasks", json=TASK, headers={"Idempotency-Key": "once"},
                           timeout=60)))
            creating.start()
            try:
                wait_until(lambda: _calls(http).get("thread") == 1.0, 30, "the create waiting in a thread")
                # the event loop is free: everything else is answered while that create waits
                assert http.get("/api/health").status_code == 200
                assert http.get("/api/agent/tasks/count").json()["total"] == 1
            finally:
                writer.execute("ROLLBACK")
                writer.close()
            creating.join(60)
            assert [answer.status_code for answer in answers] == [201]
            assert http.get("/api/agent/tasks/count").json()["total"] == 2  # the refused try wrote nothing
            assert _calls(http) == {"event_loop": 4.0, "thread": 1.0}
    finally:
        api.stop()
