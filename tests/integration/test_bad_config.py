"""Bad configuration fails fast: one line naming the setting and the cause, exit 2, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import free_port

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _run(tmp_path: Path, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COHERENCE_HOME": str(tmp_path / "home"), **env}
    return subprocess.run(list(command), env=full, cwd=tmp_path, capture_output=True, text=True, timeout=60)


COHERENCE = (sys.executable, "-m", "coherence_network.cli")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "garbage"}, "coherence: DATABASE_URL=garbage is not a database URL this can use"),
        ({"DATABASE_URL": "mysql://me:hunter2-secret@db/x"},
         "coherence: DATABASE_URL=mysql://me:***@db/x is not a database URL"),
        ({"COHERENCE_HOME": "/proc/no-such-home"}, "coherence: COHERENCE_HOME=/proc/no-such-home: cannot create"),
    ],
    ids=["garbage-url", "unsupported-store", "unusable-home"],
)
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    done = _run(tmp_path, *COHERENCE, "migrate", **env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(expected) and done.stderr.count("\n") == 1, done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


def test_scripts_report_a_bad_setting_the_same_way(tmp_path: Path) -> None:
    done = _run(tmp_path, sys.executable, str(SCRIPTS / "index_pypi.py"), "--packages", "x", DATABASE_URL="garbage")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("index_pypi.py: DATABASE_URL=garbage is not a database URL"), done.stderr


def test_an_api_whose_store_cannot_be_reached_stops_at_once(tmp_path: Path) -> None:
    """Not "migration failed" and then a traceback every reaper pass: one line naming DATABASE_URL, exit 2."""
    url = "postgresql://me:hunter2-secret@127.0.0.1:9/coherence"  # the discard port: nothing answers
    done = _run(tmp_path, *COHERENCE, "api", "--port", str(free_port()), DATABASE_URL=url)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("coherence: the store at DATABASE_URL=postgresql+psycopg://me:***@127.0.0.1:9/")
    assert "cannot be used" in done.stderr and done.stderr.count("\n") == 1 and "hunter2" not in done.stderr


def test_an_api_whose_port_is_taken_says_by_whom(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = _run(tmp_path, *COHERENCE, "api", "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"coherence: port {port} on 127.0.0.1 is taken by pid {os.getpid()} (")
    assert done.stderr.count("\n") == 1
