"""`coherence stop --port`: the stray process on a port is found by the socket it holds, and only ours is stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.api import ApiProcess
from tests.support.net import free_port, wait_until
from tests.support.pipeline import alive


def _stop(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COHERENCE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "coherence_network.cli", "stop", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_stray_api_is_stopped_by_the_port_it_holds(tmp_path: Path) -> None:
    api = ApiProcess(tmp_path / "home").start()
    try:
        done = _stop(tmp_path / "elsewhere", "--port", str(api.port), "--grace", "10")  # another home: no lock helps
        assert done.returncode == 0, done.stderr
        assert api.proc is not None and f"port {api.port}: pid {api.proc.pid}" in done.stdout
        assert "stopped" in done.stdout and api.proc.wait(10) == 0
    finally:
        api.stop()


def test_a_listener_that_is_not_coherence_is_left_alone(tmp_path: Path) -> None:
    port = free_port()
    code = f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(120)"
    other = subprocess.Popen([sys.executable, "-c", code])
    try:
        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 10, "the other program to listen")
        done = _stop(tmp_path / "home", "--port", str(port))
        assert done.returncode == 1 and "not a coherence process: not stopped" in done.stderr
        assert alive(other.pid)
        nobody = _stop(tmp_path / "home", "--port", str(free_port()))
        assert nobody.returncode == 1 and "nothing of yours listens on port" in nobody.stderr
    finally:
        other.kill()
        other.wait(10)
