"""Settings that must agree are derived, not repeated: COHERENCE_API_PORT alone moves the API and every client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from coherence_network.settings import Settings
from tests.support.net import free_port


def test_the_clients_address_follows_the_apis_host_and_port() -> None:
    assert Settings(coherence_api_port=9000).agent_api_base == "http://127.0.0.1:9000"
    assert Settings(coherence_api_host="0.0.0.0", coherence_api_port=8100).agent_api_base == "http://127.0.0.1:8100"
    assert Settings(coherence_api_host="::1").agent_api_base == "http://[::1]:8000"
    explicit = Settings(coherence_api_port=9000, agent_api_base="http://api.internal:8000")
    assert explicit.agent_api_base == "http://api.internal:8000"


def test_config_says_where_each_value_came_from(tmp_path: Path) -> None:
    env = {**os.environ, "COHERENCE_API_PORT": "9123", "COHERENCE_HOME": str(tmp_path)}
    env.pop("AGENT_API_BASE", None)
    shown = subprocess.run([sys.executable, "-m", "coherence_network.cli", "config"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    line = next(row for row in shown.splitlines() if row.startswith("AGENT_API_BASE"))
    assert "http://127.0.0.1:9123" in line and "[derived from COHERENCE_API_HOST and COHERENCE_API_PORT]" in line
    assert "[environment]" in next(row for row in shown.splitlines() if row.startswith("COHERENCE_API_PORT"))


def test_the_api_port_alone_moves_the_whole_pipeline(tmp_path: Path) -> None:
    """The supervisor's health probe, the runner and the project manager all follow COHERENCE_API_PORT."""
    home, port = tmp_path / "home", free_port()
    backlog = tmp_path / "backlog.md"
    backlog.write_text("1. run: python -c \"print('moved')\"\n", encoding="utf-8")
    env = {**os.environ, "COHERENCE_HOME": str(home), "COHERENCE_API_PORT": str(port),
           "COHERENCE_WORKSPACE": str(tmp_path), "COHERENCE_RUNNER_HEARTBEAT_SECONDS": "0.5",
           "SUPERVISOR_BACKOFF_SECONDS": "0.1", "MONITOR_DISK_MIN_FREE_MB": "1"}
    env.pop("AGENT_API_BASE", None)
    done = subprocess.run(
        [sys.executable, "-m", "coherence_network.cli", "supervise", "--backlog", str(backlog), "--until-done",
         "--pm-arg=--interval", "--pm-arg=0.2"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    supervisor_log = (home / "logs" / "supervisor.log").read_text(encoding="utf-8")
    assert done.returncode == 0, supervisor_log[-3000:]
    assert f"API answers at http://127.0.0.1:{port}" in supervisor_log
    assert f"pipeline running: API http://127.0.0.1:{port} (reference http://127.0.0.1:{port}/docs)" in supervisor_log
    assert "moved" in (home / "logs" / "task_1.log").read_text(encoding="utf-8")
