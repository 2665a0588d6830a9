"""/api/ready says when writes cannot succeed (a full disk), and tells only a caller with the token why.

Before, it stayed 200 while every write failed on a full disk, and a store failure's driver text (database host,
port, user) went to anonymous callers."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.postgres import PostgresServer
from tests.support.small_disk import fill
from tests.support.small_disk import small_disk as small_disk_at

TOKEN = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TASK = {"direction": "say hello", "task_type": "run", "command": "echo hello"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs for the API's COHERENCE_HOME (its SQLite store too)."""
    with small_disk_at(tmp_path / "small", 48) as mount:
        yield mount


def test_a_full_disk_is_not_ready_and_only_the_token_holder_is_told_where(small_disk: Path) -> None:
    api = ServedApi(small_disk / "home", env={"COHERENCE_API_TOKEN": TOKEN}).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            assert http.get("/api/ready").status_code == 200
            filler = fill(small_disk)
            assert http.post("/api/agent/tasks", json=TASK, headers=AUTH).status_code == 503  # writes fail
            anonymous = http.get("/api/ready")
            assert anonymous.status_code == 503
            shown = {c["name"]: c for c in anonymous.json()["checks"]}
            assert shown["store_writable"]["ok"] is False and str(small_disk) not in anonymous.text
            assert "see var/logs/api.log" in anonymous.json()["reason"]
            told = http.get("/api/ready", headers=AUTH)
            assert told.status_code == 503 and "bytes free" in told.json()["reason"]
            assert str(small_disk) in told.json()["reason"]
            log = (small_disk / "home" / "logs" / "api.log").read_text(encoding="utf-8")
            assert log.count("not ready: store_writable") == 1  # once, however often it is asked
            filler.unlink()
            assert http.get("/api/ready").status_code == 200
            assert http.post("/api/agent/tasks", json=TASK, headers=AUTH).status_code == 201
    finally:
        api.stop()


def test_a_store_outage_names_no_host_port_or_user_to_anonymous_callers(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="coherence-pg-ready-"))
    server = PostgresServer(root).start()
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": server.new_database(),
                                              "COHERENCE_API_TOKEN": TOKEN}).start()
    try:
        server.stop()
        anonymous = httpx.get(f"{api.url}/api/ready", timeout=10)
        assert anonymous.status_code == 503 and "see var/logs/api.log" in anonymous.json()["reason"]
        assert str(server.port) not in anonymous.text and "127.0.0.1" not in anonymous.text
        assert "coherence" not in anonymous.text  # the database user
        told = httpx.get(f"{api.url}/api/ready", timeout=10, headers=AUTH)
        assert told.status_code == 503 and str(server.port) in told.json()["reason"]
        log = tmp_path / "home" / "logs" / "api.log"
        wait_until(lambda: "not ready: store_reachable: OperationalError" in log.read_text(encoding="utf-8"), 10,
                   "the full detail in api.log")
        server.resume()
        wait_until(lambda: httpx.get(f"{api.url}/api/ready", timeout=10).status_code == 200, 30, "ready again")
    finally:
        api.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
