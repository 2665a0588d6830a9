"""The API as a real process (``coherence api``) on an ephemeral loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.net import free_port, wait_until


class ApiProcess:
    def __init__(self, home: Path, *, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.env = {**os.environ, "COHERENCE_HOME": str(home), "COHERENCE_REAP_INTERVAL": "0.2", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"API exited with {self.proc.returncode}; see {self.home / 'logs' / 'api.log'}")
        try:
            return httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def start(self) -> ApiProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coherence_network.cli", "api", "--port", str(self.port)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(self._healthy, 30, "API health")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
