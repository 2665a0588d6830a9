"""What tasks see and what they leave: no secret reaches a task or anything served from its output, and every file
under COHERENCE_HOME is private to its owner while tasks keep the operator's umask in the workspace.

Real API and runner processes; the secrets test runs on both stores."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus
from tests.support.api import ApiProcess
from tests.support.runner import RunnerProcess

PY = sys.executable
API_TOKEN = "api-token-0123456789abcdef"
DB_PASSWORD = "db-password-0123456789"
# What the runner's environment holds: the project's own secrets, a credential of another program, and one the
# operator passes through on purpose (the agent's own key).
SECRETS = {
    "COHERENCE_API_TOKEN": API_TOKEN,
    "TELEGRAM_BOT_TOKEN": "123456:bot-token-abcdefghijkl",
    "TELEGRAM_WEBHOOK_SECRET": "webhook-secret-0123456789",
    "DATABASE_URL": f"postgresql://coherence:{DB_PASSWORD}@127.0.0.1:1/unused",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key-0123456789",
    "GH_TOKEN": "gh-token-0123456789abcdef",
}
# The task prints its environment, then echoes values it learned another way (a file in the workspace), each in
# two writes with a pause between them, so the runner reads each secret in two pieces from the pipe.
PRINT_ENV = """
import os, sys, time
for name, value in sorted(os.environ.items()):
    print(f"{name}={value}", flush=True)
for value in open(sys.argv[1]).read().split():
    half = len(value) // 2
    sys.stdout.write("echo " + value[:half]); sys.stdout.flush(); time.sleep(0.3)
    sys.stdout.write(value[half:] + "\\n"); sys.stdout.flush()
time.sleep(1.5)  # the last line (an echoed secret) goes out with a heartbeat as the task's current step
"""


def test_a_task_that_prints_its_environment_shows_no_secret(tmp_path: Path, store_url: str) -> None:
    home = tmp_path / "home"
    api = ApiProcess(home, env={"DATABASE_URL": store_url, "COHERENCE_API_TOKEN": API_TOKEN,
                                "COHERENCE_LEASE_SECONDS": "1.5"}).start()
    try:
        known = tmp_path / "known.txt"
        known.write_text(" ".join([DB_PASSWORD, *SECRETS.values()]))
        program = tmp_path / "print_env.py"
        program.write_text(PRINT_ENV)
        with ApiClient(api.url, token=API_TOKEN, retries=0) as client:
            task = client.create_task("print the environment", "run", command=f"{PY} {program} {known}")
            env = {**SECRETS, "COHERENCE_TASK_ENV_PASSTHROUGH": "GH_TOKEN", "PLAIN_SETTING": "visible-value"}
            done = RunnerProcess(home, api.url, "--once", env=env).run()
            assert done.returncode == 0, done.stdout + done.stderr
            finished = client.get_task(task.id)
            assert finished.status == TaskStatus.COMPLETED
            answers = {path: client.get(path) for path in (
                f"/api/agent/tasks/{task.id}", "/api/agent/tasks", "/api/agent/pipeline-status", "/api/agent/runners",
            )}
            with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
                for path in (f"/api/agent/tasks/{task.id}/log", f"/api/agent/tasks/{task.id}/log?tail=5"):
                    answers[path] = http.get(path).text
    finally:
        api.stop()
    log = (home / "logs" / f"task_{task.id}.log").read_text()
    places = {"task log": log, "stored output": finished.output, **{f"GET {p}": str(a) for p, a in answers.items()}}
    for where, text in places.items():
        for value in [DB_PASSWORD, *SECRETS.values()]:
            assert value not in text, f"{where} shows a secret"
    seen = dict(line.split("=", 1) for line in log.splitlines() if "=" in line and not line.startswith("==="))
    assert not {"COHERENCE_API_TOKEN", "TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET", "DATABASE_URL",
                "AWS_SECRET_ACCESS_KEY"} & set(seen), "the task was handed a secret"
    assert seen["GH_TOKEN"] == "***" and seen["PLAIN_SETTING"] == "visible-value"  # passed through, yet masked
    assert log.count("echo ***\n") == len(SECRETS) + 1 and finished.output.count("echo ***\n") == len(SECRETS) + 1


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
