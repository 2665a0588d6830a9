"""`make run` (scripts/run_autonomous.sh) commits to the operator's git history only when told to: on a terminal it
asks (default no), elsewhere it does not unless PIPELINE_AUTO_COMMIT or --auto-commit says so; a line in the
supervisor's log says which, loudly when it is on."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
RUN = str(ROOT / "scripts" / "run_autonomous.sh")
ON = "AUTO-COMMIT IS ON"
OFF = "auto-commit is off"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k != "PIPELINE_AUTO_COMMIT"}
    return {**inherited, "COHERENCE_HOME": str(tmp_path / "home"), "COHERENCE_WORKSPACE": str(tmp_path),
            "AGENT_API_BASE": f"http://127.0.0.1:{free_port()}", "MONITOR_INTERVAL": "60",
            "SUPERVISOR_STOP_GRACE_SECONDS": "5", **extra}


def _until_said(fd: int, proc: subprocess.Popen[bytes], answer: bytes | None = None) -> str:
    """What the pipeline prints until it says whether it commits (answering its question when there is one); then
    it is stopped."""
    seen, answered, deadline = b"", answer is None, time.monotonic() + 30
    try:
        while time.monotonic() < deadline and ON.encode() not in seen and OFF.encode() not in seen:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:  # the terminal closed: the command is gone
                    break
            if not answered and b"[y/N]" in seen:
                os.write(fd, answer or b"\n")
                answered = True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return seen.decode(errors="replace")


def _on_a_terminal(tmp_path: Path, answer: bytes, **env: str) -> str:
    master, slave = pty.openpty()
    proc = subprocess.Popen([RUN, "--components", "monitor"], env=_env(tmp_path, **env), stdin=slave, stdout=slave,
                            stderr=slave)
    os.close(slave)
    try:
        return _until_said(master, proc, answer)
    finally:
        os.close(master)


def _piped(tmp_path: Path, *args: str, **env: str) -> str:
    proc = subprocess.Popen([RUN, "--components", "monitor", *args], env=_env(tmp_path, **env),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    return _until_said(proc.stderr.fileno(), proc)


def test_on_a_terminal_make_run_asks_and_no_is_the_default(tmp_path: Path) -> None:
    declined = _on_a_terminal(tmp_path, b"\n")
    assert f"Commit the workspace {tmp_path} after each completed" in declined and "[y/N]" in declined
    assert OFF in declined and ON not in declined
    accepted = _on_a_terminal(tmp_path, b"y\n")
    assert f"{ON}: every completed spec/test/impl/review task is committed in {tmp_path}" in accepted


def test_elsewhere_it_does_not_commit_unless_told_and_says_so(tmp_path: Path) -> None:
    quiet = _piped(tmp_path)
    assert OFF in quiet and "--auto-commit yes or PIPELINE_AUTO_COMMIT=1" in quiet and "[y/N]" not in quiet
    assert ON in _piped(tmp_path, PIPELINE_AUTO_COMMIT="1")
    pushed = _piped(tmp_path, "--push")
    assert f"{ON}: every completed spec/test/impl/review task is committed in {tmp_path} and pushed" in pushed
