"""What tasks leave: every file under COHERENCE_HOME is private to its owner while tasks keep the operator's umask
in the workspace. Real API and runner processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus
from tests.support.api import ApiProcess
from tests.support.runner import RunnerProcess

PY = sys.executable


@pytest.fixture
def operator_umask() -> Iterator[int]:
    """The usual umask of an operator's shell, for the processes this test starts."""
    previous = os.umask(0o022)
    yield 0o022
    os.umask(previous)


def _not_private(home: Path) -> list[str]:
    """Every folder under ``home`` that is not 0700 and every file that is not 0600."""
    wrong = []
    for path in [home, *home.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong.append(f"{path.relative_to(home.parent)} {mode:o}")
    return wrong


def test_var_is_private_to_its_owner_and_tasks_keep_the_operator_umask(tmp_path: Path, operator_umask: int) -> None:
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)  # left by an older version: readable by all
    old = home / "logs" / "task_999.log"
    old.write_text("old output\n")
    home.chmod(0o755)
    api = ApiProcess(home).start()
    try:
        with ApiClient(api.url, token="", retries=0) as client:
            made = tmp_path / "made_by_task.txt"
            run = client.create_task("write a file", "run", command=f"{PY} -c \"open('{made}', 'w').write('x')\"")
            agent = client.create_task("use the prompt file", "spec")
            template = f"{PY} -c \"import sys; print(open(sys.argv[1]).read())\" {{prompt_file}}"
            done = RunnerProcess(home, api.url, "--once", env={"COHERENCE_AGENT_COMMAND": template}).run()
            assert done.returncode == 0, done.stdout + done.stderr
            assert [client.get_task(t.id).status for t in (run, agent)] == [TaskStatus.COMPLETED] * 2
        assert {p.name for p in home.iterdir()} >= {"coherence.db", "coherence.db-wal", "coherence.db-shm"}
        assert (home / "run" / "prompts" / f"prompt_{agent.id}.md").exists() and (home / "run" / "api.pid").exists()
        assert _not_private(home) == []
    finally:
        api.stop()
    assert _not_private(home) == []
    assert stat.S_IMODE(made.stat().st_mode) == 0o644  # the task's own file: the operator's umask


def test_rotated_logs_are_private(tmp_path: Path, operator_umask: int) -> None:
    code = ("import logging, sys; from coherence_network.logfiles import setup_logging; "
            "from coherence_network.settings import Settings; "
            "setup_logging('api', Settings(coherence_home=sys.argv[1]), console=False); "
            "logging.info('before'); logging.getLogger().handlers[0].doRollover(); logging.info('after')")
    subprocess.run([PY, "-c", code, str(tmp_path / "home")], check=True, timeout=60)
    assert sorted(p.name for p in (tmp_path / "home" / "logs").iterdir()) == ["api.log", "api.log.1"]
    assert _not_private(tmp_path / "home") == []


def test_a_runner_started_private_runs_tasks_with_the_umask_it_was_handed(api_process: ApiProcess,
                                                                           tmp_path: Path) -> None:
    """A supervisor's children inherit its private umask, and the operator's in COHERENCE_TASK_UMASK."""
    made = tmp_path / "made_by_task.txt"
    with ApiClient(api_process.url, token="", retries=0) as client:
        task = client.create_task("write a file", "run", command=f"{PY} -c \"open('{made}', 'w').write('x')\"")
        previous = os.umask(0o077)
        try:
            done = RunnerProcess(api_process.home, api_process.url, "--once", env={"COHERENCE_TASK_UMASK": "027"}).run()
        finally:
            os.umask(previous)
        assert done.returncode == 0, done.stdout + done.stderr
        assert client.get_task(task.id).status == TaskStatus.COMPLETED
    assert stat.S_IMODE(made.stat().st_mode) == 0o640
