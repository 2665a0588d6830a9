"""`coherence supervise` as a real process in a temporary COHERENCE_HOME, and how tests look at what it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.net import free_port, wait_until


def pipeline_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    """Fast timings so restarts, heartbeats and stops happen within a test's patience."""
    return {
        **os.environ, "COHERENCE_HOME": str(home), "COHERENCE_API_PORT": str(port),
        "AGENT_API_BASE": f"http://127.0.0.1:{port}", "COHERENCE_WORKSPACE": str(home.parent),
        "COHERENCE_REAP_INTERVAL": "0.2", "COHERENCE_RUNNER_HEARTBEAT_SECONDS": "0.5",
        "COHERENCE_RUNNER_STOP_GRACE_SECONDS": "1", "AGENT_KILL_GRACE_SECONDS": "1",
        "SUPERVISOR_BACKOFF_SECONDS": "0.1", "SUPERVISOR_STOP_GRACE_SECONDS": "10", "MONITOR_INTERVAL": "0.5",
        "MONITOR_DISK_MIN_FREE_MB": "1", "COHERENCE_HTTP_RETRIES": "1", **extra,
    }


class PipelineProcess:
    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.env = pipeline_env(home, self.port, **(env or {}))
        self.args = args
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def started_in(cls, pipelines: list[PipelineProcess], home: Path, *args: str, **env: str) -> PipelineProcess:
        """Start one and add it to ``pipelines`` (the conftest fixture that stops them all)."""
        pipeline = cls(home, *args, env=env).start()
        pipelines.append(pipeline)
        return pipeline

    def start(self) -> PipelineProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coherence_network.cli", "supervise", *self.args], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        return self

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "coherence_network.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def pid(self, component: str) -> int | None:
        try:
            return int((self.home / "run" / f"{component}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def api_up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def wait_started(self, *components: str, timeout: float = 60) -> None:
        def started() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "the supervisor exited"
            return all(alive(self.pid(c)) for c in components)

        wait_until(started, timeout, f"{components} started")

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in processes_with_home(self.home):  # never leave anything behind, even when a test failed
            os.kill(pid, signal.SIGKILL)


def alive(pid: int | None) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    if pid is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def processes_with_home(home: Path) -> list[int]:
    """Live processes whose environment names this COHERENCE_HOME: everything the pipeline started, tasks included."""
    marker = f"COHERENCE_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found
