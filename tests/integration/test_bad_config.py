"""Bad configuration fails fast: one line naming the setting and the cause, exit 2, no traceback, from every
command (each run as a real subprocess, the matrix in parallel)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.net import free_port

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _run(tmp_path: Path, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COHERENCE_HOME": str(tmp_path / "home"), **env}
    return subprocess.run(list(command), env=full, cwd=tmp_path, capture_output=True, text=True, timeout=60)


COHERENCE = (sys.executable, "-m", "coherence_network.cli")


def test_scripts_report_a_bad_setting_the_same_way(tmp_path: Path) -> None:
    done = _run(tmp_path, sys.executable, str(SCRIPTS / "index_pypi.py"), "--packages", "x", DATABASE_URL="garbage")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("index_pypi.py: DATABASE_URL=garbage is not a database URL"), done.stderr


def test_an_api_whose_port_is_taken_says_by_whom(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = _run(tmp_path, *COHERENCE, "api", "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"coherence: port {port} on 127.0.0.1 is taken by pid {os.getpid()} (")
    assert done.stderr.count("\n") == 1


CLOSED = f"postgresql://me:hunter2-secret@127.0.0.1:{free_port()}/coherence"  # connect refused at once
CLOSED_API = f"http://127.0.0.1:{free_port()}"
# Each command with a bad setting: settings are read by one class before a command does anything, so each bad
# setting is tried on one command and each command with one; the store's commands also meet a closed port.
MATRIX: list[tuple[tuple[str, ...], dict[str, str], str]] = [
    (("migrate",), {"DATABASE_URL": CLOSED}, "coherence: the store at DATABASE_URL=postgresql+psycopg://me:***@"),
    (("migrate",), {"DATABASE_URL": "postgresql://me:hunter2-secret@127.0.0.1:notaport/x"},
     "coherence: DATABASE_URL=postgresql+psycopg://me:***@127.0.0.1:notaport/x is not a database URL"),
    (("migrate",), {"COHERENCE_HOME": "/proc/no-such-home"},
     "coherence: COHERENCE_HOME=/proc/no-such-home: cannot create"),
    (("api", "--port", str(free_port())), {"DATABASE_URL": CLOSED},  # not "migration failed", then a traceback
     "coherence: the store at DATABASE_URL=postgresql+psycopg://me:***@127.0.0.1:"),
    (("status",), {"DATABASE_URL": "garbage"}, "coherence: DATABASE_URL=garbage is not a database URL this can use"),
    (("runner", "--once"), {"COHERENCE_LEASE_SECONDS": "-1"}, ("coherence: COHERENCE_LEASE_SECONDS: Input should be "
      "greater than 0")),
    (("pm", "--once"), {"DATABASE_URL": "mysql://me:hunter2-secret@db/x"},
     "coherence: DATABASE_URL=mysql://me:***@db/x is not a database URL this can use (mysql is not a supported"),
    (("monitor", "--once"), {"AGENT_API_BASE": "not-a-url"},
     "coherence: AGENT_API_BASE=not-a-url is not an http:// or https:// URL with a host"),
    (("telegram",), {"TELEGRAM_API_BASE": "api.telegram.org"}, "coherence: TELEGRAM_API_BASE=api.telegram.org is not"),
    (("supervise",), {"COHERENCE_API_PORT": "abc"}, "coherence: COHERENCE_API_PORT: Input should be a valid integer"),
    (("doctor",), {"AGENT_API_BASE": "http://127.0.0.1:port"}, ("coherence: AGENT_API_BASE=http://127.0.0.1:port is "
      "not a URL")),
    (("create", "x", "--command", "true"), {"COHERENCE_API_TOKEN": "short"}, "coherence: COHERENCE_API_TOKEN must be"),
    (("tasks",), {"MONITOR_INTERVAL": "soon"}, "coherence: MONITOR_INTERVAL: Input should be a valid number"),
    (("runner", "--once"), {"AGENT_API_BASE": "not-a-url"}, "coherence: AGENT_API_BASE=not-a-url is not an http"),
    # a one-shot command that cannot reach the API did nothing, as with a bad setting (long-running ones retry)
    (("status",), {"AGENT_API_BASE": CLOSED_API}, f"the API at {CLOSED_API} is unreachable (ConnectError"),
    (("create", "x", "--command", "true"), {"AGENT_API_BASE": CLOSED_API}, f"the API at {CLOSED_API} is unreachable"),
    (("prune", "--dry-run"), {"AGENT_API_BASE": CLOSED_API}, f"the API at {CLOSED_API} is unreachable"),  # it prunes
]


@pytest.mark.long
def test_every_command_says_a_bad_setting_or_an_unreachable_store_in_one_line(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda case: _run(tmp_path, *COHERENCE, *case[0], **case[1]), MATRIX))
    wrong = [f"coherence {' '.join(args)} with {env}: exit {done.returncode}, stderr {done.stderr[-600:]!r}"
             for (args, env, expected), done in zip(MATRIX, runs)
             if done.returncode != 2 or not done.stderr.startswith(expected) or done.stderr.count("\n") != 1
             or "hunter2" in done.stderr]
    assert not wrong, "\n".join(wrong)
