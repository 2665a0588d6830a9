"""The agent runner as a real process (``coherence runner``) against an API process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


class RunnerProcess:
    def __init__(self, home: Path, api_url: str, *args: str, env: dict[str, str] | None = None,
                 output: Path | None = None, base_env: Mapping[str, str] = os.environ) -> None:
        """``base_env``: the environment it starts from (``env`` added on top), by default this process's."""
        self.args = args
        self.output = output  # where its stdout and stderr go when started (default: a pipe)
        self.env = {
            **base_env, "COHERENCE_HOME": str(home), "AGENT_API_BASE": api_url,
            "COHERENCE_WORKSPACE": str(home.parent), "COHERENCE_HTTP_TIMEOUT": "5", **(env or {}),
        }
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> RunnerProcess:
        sink = open(self.output, "ab") if self.output else None
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coherence_network.cli", "runner", *self.args],
                env=self.env, stdout=sink or subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )
        finally:
            if sink:
                sink.close()
        return self

    def run(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run to its end (``--once``) and return the result."""
        return subprocess.run(
            [sys.executable, "-m", "coherence_network.cli", "runner", *self.args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig) if sig == signal.SIGKILL else self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


def task_group(home: Path, task_id: int) -> int | None:
    """The process group a runner on ``home`` recorded for the task (run/task_groups), None while it has none."""
    for record in (home / "run" / "task_groups").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            recorded = json.loads(record.read_text())
            if recorded["task_id"] == task_id:
                return int(recorded["pgid"])
    return None


def group_gone(pgid: int) -> bool:
    """No process is left in the group (every member ended and was reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
