"""A store lost while the API runs is logged once when it goes and once when it comes back, not a traceback per
reaper pass (about 7,400 lines in 30 s under the supervisor, before)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx

from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.postgres import PostgresServer


def test_a_store_outage_is_two_log_lines_and_the_api_recovers(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="coherence-pg-outage-"))
    server = PostgresServer(root).start()
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": server.new_database(), "COHERENCE_LEASE_SECONDS": "1"})
    try:
        api.start()
        log = tmp_path / "home" / "logs" / "api.log"
        server.stop()
        wait_until(lambda: "store unavailable to the lease reaper" in log.read_text(encoding="utf-8"), 30, "the line")
        assert httpx.get(f"{api.url}/api/health", timeout=5).status_code == 200  # liveness never asks the store
        assert httpx.get(f"{api.url}/api/ready", timeout=10).status_code == 503
        server.resume()
        wait_until(lambda: "store available again" in log.read_text(encoding="utf-8"), 60, "the recovery line")
        text = log.read_text(encoding="utf-8")
        assert text.count("store unavailable to the lease reaper") == 1 and "Traceback" not in text
        assert httpx.get(f"{api.url}/api/ready", timeout=10).status_code == 200
    finally:
        api.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
