"""`coherence api --workers 2` on a fresh store of each backend: both workers start, migrate once between them, log
to api.log, and serve."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.net import free_port, wait_until

WORKER_LINE = re.compile(r"API worker pid (\d+) \(parent (\d+)\)")


def test_two_workers_start_cleanly_on_a_fresh_store(store_url: str, tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    env = {**os.environ, "COHERENCE_HOME": str(home),
           "DATABASE_URL": "" if store_url.startswith("sqlite") else store_url}
    api = subprocess.Popen([sys.executable, "-m", "coherence_network.cli", "api", "--workers", "2", "--port",
                            str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    log = home / "logs" / "api.log"
    try:
        def log_text() -> str:
            assert api.poll() is None, f"the API exited with {api.returncode}: {api.communicate()[0]}"
            return log.read_text() if log.exists() else ""

        wait_until(lambda: log_text().count("Application startup complete") == 2, 60, "two workers started")
        workers = {int(pid): int(parent) for pid, parent in WORKER_LINE.findall(log_text())}
        assert len(workers) == 2 and set(workers.values()) == {api.pid}  # two processes, both children of the API
        assert log_text().count("API started") == 2  # the app's own logger reaches api.log in each worker
        ready = httpx.get(f"http://127.0.0.1:{port}/api/ready", timeout=10).json()
        assert ready["ready"] is True
        assert {check["name"]: check["ok"] for check in ready["checks"]}["migrations_current"] is True
        created = httpx.post(f"http://127.0.0.1:{port}/api/agent/tasks", timeout=10,
                             json={"direction": "served by a worker", "task_type": "run"})
        assert created.status_code == 201, created.text
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        output, _ = api.communicate(timeout=60)
    assert api.returncode == 0, output
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text, text
    assert "Traceback" not in output, output
