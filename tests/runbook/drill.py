"""Carries out runbook procedures as written: each command of a marked block run by bash, in order.

The only change made to a command is the port: 8000 becomes the drill's ephemeral port. The drill's environment
points COHERENCE_HOME at a temporary folder and puts the project's venv first on PATH, as `make` leaves it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.runbook.runbook_doc import ROOT, CodeBlock

VENV_BIN = ROOT / ".venv" / "bin"


class Drill:
    def __init__(self, home: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = port
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "COHERENCE_HOME": str(home),
            "COHERENCE_API_PORT": str(port),
            "AGENT_API_BASE": f"http://127.0.0.1:{port}",
            "COHERENCE_REAP_INTERVAL": "0.2",
            "COLUMNS": "200",
            **(env or {}),
        }
        self.groups: list[int] = []

    def rewrite(self, command: str) -> str:
        return command.replace(":8000", f":{self.port}").replace("--port 8000", f"--port {self.port}")

    def run(self, command: str, *, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one runbook command with bash; background jobs it starts are stopped by ``close``."""
        proc = subprocess.Popen(
            ["bash", "-c", self.rewrite(command)], cwd=ROOT, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.groups.append(proc.pid)
        out, err = proc.communicate(timeout=timeout)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check and done.returncode != 0:
            raise AssertionError(f"runbook command failed ({done.returncode}): {command}\n{out[-2000:]}\n{err[-2000:]}")
        return done

    def run_block(self, block: CodeBlock, *, timeout: float = 120) -> list[subprocess.CompletedProcess[str]]:
        return [self.run(command, timeout=timeout) for command in block.commands()]

    def close(self) -> None:
        """Stop every process group a drill command left running (servers started with `&`)."""
        for pgid in self.groups:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
