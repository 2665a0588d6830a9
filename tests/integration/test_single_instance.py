"""Single instance by a lock the kernel releases: the loser of a race neither runs nor touches the winner's PID file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.api import ApiProcess
from tests.support.net import free_port, wait_until
from tests.support.pipeline import alive, pipeline_env


def _coherence(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "coherence_network.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def test_two_supervisors_started_at_once_one_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = pipeline_env(home, free_port())
    both = [_coherence(env, "supervise", "--components", "monitor") for _ in range(2)]
    try:
        wait_until(lambda: any(p.poll() is not None for p in both), 60, "one supervisor to give up")
        loser = next(p for p in both if p.poll() is not None)
        winner = next(p for p in both if p is not loser)
        _, err = loser.communicate(timeout=10)
        assert loser.returncode == 1
        assert f"supervisor already runs (pid {winner.pid})" in err
        assert winner.poll() is None
        assert int((home / "run" / "supervisor.pid").read_text()) == winner.pid
        stopped = subprocess.run([sys.executable, "-m", "coherence_network.cli", "stop"], env=env, text=True,
                                 capture_output=True, timeout=120)
        assert f"supervisor (pid {winner.pid}): stopped" in stopped.stdout
        assert winner.wait(60) == 0
    finally:
        for proc in both:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_a_second_api_on_a_busy_port_leaves_the_first_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = ApiProcess(home).start()
    try:
        assert first.proc is not None
        pid_file = home / "run" / "api.pid"
        assert int(pid_file.read_text()) == first.proc.pid
        second = subprocess.run([sys.executable, "-m", "coherence_network.cli", "api", "--port", str(first.port)],
                                env=first.env, text=True, capture_output=True, timeout=60)
        assert second.returncode == 1
        assert f"api already runs (pid {first.proc.pid})" in second.stderr
        assert int(pid_file.read_text()) == first.proc.pid  # the winner's PID file is untouched
        stopped = subprocess.run([sys.executable, "-m", "coherence_network.cli", "stop", "--grace", "20"],
                                 env=first.env, text=True, capture_output=True, timeout=120)
        assert f"api (pid {first.proc.pid}): stopped" in stopped.stdout
        assert first.proc.wait(30) == 0
        assert not pid_file.exists()
    finally:
        first.stop()


def test_stop_ignores_a_pid_file_nobody_holds(tmp_path: Path) -> None:
    """A PID file left by a killed process names a pid that may be reused: only the lock says what runs."""
    home = tmp_path / "home"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # coherence"])
    try:
        (home / "run").mkdir(parents=True)
        (home / "run" / "monitor.pid").write_text(f"{bystander.pid}\n")
        stopped = subprocess.run([sys.executable, "-m", "coherence_network.cli", "stop"],
                                 env={**os.environ, "COHERENCE_HOME": str(home)}, text=True, capture_output=True,
                                 timeout=60)
        assert "monitor: stale PID file removed" in stopped.stdout
        assert alive(bystander.pid) and not (home / "run" / "monitor.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()


HOLDS_AND_IGNORES_SIGTERM = """
import signal, time
from coherence_network.pidfiles import hold
from coherence_network.settings import get_settings
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with hold(get_settings(), "monitor"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_stop_gives_the_supervisors_grace_by_default(tmp_path: Path) -> None:
    """One setting: coherence stop waits SUPERVISOR_STOP_GRACE_SECONDS before SIGKILL, as the supervisor does (it
    waited a fixed 30 s while the supervisor gave 45)."""
    env = {**os.environ, "COHERENCE_HOME": str(tmp_path / "home"), "SUPERVISOR_STOP_GRACE_SECONDS": "0.5"}
    stubborn = subprocess.Popen([sys.executable, "-c", HOLDS_AND_IGNORES_SIGTERM], env=env, text=True,
                                stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "held"
        stopped = subprocess.run([sys.executable, "-m", "coherence_network.cli", "stop"], env=env, text=True,
                                 capture_output=True, timeout=20)
        assert f"monitor (pid {stubborn.pid}): killed after the grace period" in stopped.stdout, stopped.stderr
        assert stubborn.wait(10) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()
