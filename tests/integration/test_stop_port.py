"""`coherence stop --port`: the stray process on a port is found by the socket it holds, and only ours is stopped
(recognised by its whole command line, however it was started); `coherence stop`: every runner of the home too,
started by hand or not."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from coherence_network.ports import coherence_command
from tests.support.api import ApiProcess
from tests.support.net import free_port, wait_until
from tests.support.pipeline import alive
from tests.support.runner import RunnerProcess

BIN = Path(sys.executable).parent


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


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("how", [
    [str(BIN / "coherence"), "api"],  # as the runbook starts it: python runs the console script
    [sys.executable, "-m", "coherence_network.cli.supervised", "api", str(os.getpid()), "api"],  # the supervisor
    [str(BIN / "uvicorn"), "coherence_network.api.app:create_app", "--factory", "--workers", "2"],  # plain uvicorn
], ids=["console-script", "supervisor-wrapper", "uvicorn-workers"])
def test_an_api_started_as_the_runbook_shows_is_recognised_and_stopped(tmp_path: Path, how: list[str]) -> None:
    port = free_port()
    env = {**os.environ, "COHERENCE_HOME": str(tmp_path / "home")}
    api = subprocess.Popen([*how, "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: _answers(port), 30, "the API to answer")
        done = _stop(tmp_path / "elsewhere", "--port", str(port), "--grace", "10")
        assert done.returncode == 0, done.stderr
        assert f"pid {api.pid}" in done.stdout and "stopped" in done.stdout  # the parent, not a worker
        api.wait(15)
    finally:
        if api.poll() is None:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(10)


def test_a_command_line_that_only_mentions_coherence_is_not_ours() -> None:
    assert coherence_command(["/usr/bin/python3", "-m", "coherence_network.cli", "api"]) == ["api"]
    assert coherence_command(["/opt/c/.venv/bin/python3", "/opt/c/.venv/bin/coherence", "api", "--port", "1"]) == [
        "api", "--port", "1"]
    assert coherence_command(["python3", "-m", "coherence_network.cli.supervised", "api", "12", "api"]) == ["api"]
    for foreign in (["python3", "-c", "serve()", "coherence_network.cli", "api"], ["vim", "coherence_network/cli.py"],
                    ["python3", "-m", "http.server", "coherence"], ["/usr/bin/coherence-other", "api"],
                    ["uvicorn", "someone_else:app", "coherence_network.api"], ["python3"], []):
        assert coherence_command(foreign) is None, foreign


def test_coherence_stop_stops_runners_started_by_hand(tmp_path: Path) -> None:
    """Two runners started by hand beside an API (one running a task) and one killed earlier: `coherence stop`
    stops both (the task is released through the API, which goes last) and removes the killed one's lock."""
    home = tmp_path / "home"
    api = ApiProcess(home).start()
    quick = {"COHERENCE_RUNNER_STOP_GRACE_SECONDS": "0.5", "AGENT_KILL_GRACE_SECONDS": "1"}
    runners = [RunnerProcess(home, api.url, "--interval", "1", env=quick) for _ in range(3)]
    locks = home / "run" / "runners"
    try:
        killed = runners.pop().start()  # killed before there is work, so the task goes to a live runner
        wait_until(lambda: len(list(locks.glob("*.lock"))) == 1, 30, "the first runner's lock")
        killed.signal(signal.SIGKILL)
        killed.wait(10)
        task = httpx.post(f"{api.url}/api/agent/tasks", json={"direction": "long", "task_type": "run",
                                                               "command": "sleep 300"}).json()
        for runner in runners:
            runner.start()
        wait_until(lambda: len(list(locks.glob("*.lock"))) == 3, 30, "three runner locks")
        wait_until(lambda: httpx.get(f"{api.url}/api/agent/tasks/{task['id']}").json()["status"] == "running", 30,
                   "the task to run")
        done = _stop(home, "--grace", "20")
        assert done.returncode == 0, done.stderr
        for runner in runners:
            assert runner.proc is not None and f"runner (pid {runner.proc.pid}): stopped" in done.stdout
            assert runner.wait(10) == 0
        assert done.stdout.index("runner (pid") < done.stdout.index("api (pid")
        assert api.proc is not None and api.proc.wait(10) == 0
        assert list(locks.glob("*")) == []  # the killed runner's lock too
        with sqlite3.connect(home / "coherence.db") as db:
            assert db.execute("SELECT status FROM tasks WHERE id = ?", (task["id"],)).fetchone() == ("pending",)
    finally:
        for runner in runners:
            runner.stop()
        api.stop()
