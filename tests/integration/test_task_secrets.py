"""What tasks see and what they leave: no secret reaches a task or anything served from its output, no route a task
tries (its environment, /proc of every process we started above it and of every component, the files under
COHERENCE_HOME) shows the token or the database password, only the allowed task types carry commands, and every file
under COHERENCE_HOME is private to its owner while tasks keep the operator's umask in the workspace.

Real API, runner and supervisor processes; the secrets tests run on both stores, the supervised one on PostgreSQL
with a password in DATABASE_URL."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus
from tests.support.api import ApiProcess, ServedApi
from tests.support.net import wait_until
from tests.support.pipeline import PipelineProcess
from tests.support.postgres import PostgresServer
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
# Variables that are no secret by name but hold one in a longer value: never handed to a task.
HOLDING = {
    "LEAKY_HEADER": f"Authorization: Bearer {API_TOKEN}",
    "REPORTS_DSN": f"postgresql://reports:{DB_PASSWORD}@db.internal/reports",
}
# The task looks for the secrets (given in a file) everywhere it can: its own environment, /proc/<pid>/environ and
# cmdline of each process above it up to the test (guard, runner, supervisor) and of every component with a pid file,
# and every file under COHERENCE_HOME. It writes where it looked and where it found one (never the value).
PROBE = """
import json, os, sys
from pathlib import Path
secrets = [value.encode() for value in Path(sys.argv[1]).read_text().split()]
home, stop_at, report = Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
checked, leaks, chain = [], [], []
def look(where, data):
    checked.append(where)
    if any(secret in data for secret in secrets):
        leaks.append(where)
look("environment", b"\\0".join(f"{k}={v}".encode() for k, v in os.environ.items()))
pid = os.getpid()
while True:
    pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    if pid in (stop_at, 0, 1):
        break
    chain.append(pid)
components = {int(path.read_text()) for path in (home / "run").glob("*.pid")}
for pid in sorted(set(chain) | components):
    for part in ("environ", "cmdline"):
        look(f"/proc/{pid}/{part}", Path(f"/proc/{pid}/{part}").read_bytes())
for path in sorted(home.rglob("*")):
    if path.is_file():
        look(str(path.relative_to(home)), path.read_bytes())
report.write_text(json.dumps({"chain": chain, "components": sorted(components), "checked": checked, "leaks": leaks}))
"""


def probe_command(tmp_path: Path, home: Path, secrets: list[str]) -> tuple[str, Path]:
    """The probe's command line and the file its report goes to."""
    known, program, report = tmp_path / "probe_known.txt", tmp_path / "probe.py", tmp_path / "probe.json"
    known.write_text(" ".join(secrets))
    program.write_text(PROBE)
    return f"{PY} {program} {known} {home} {os.getpid()} {report}", report


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


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


def test_a_task_that_prints_its_environment_shows_no_secret(tmp_path: Path, migrated_store_url: str) -> None:
    home = tmp_path / "home"
    api = ApiProcess(home, env={"DATABASE_URL": migrated_store_url, "COHERENCE_API_TOKEN": API_TOKEN,
                                "COHERENCE_LEASE_SECONDS": "1.5"}).start()
    try:
        known = tmp_path / "known.txt"
        known.write_text(" ".join([DB_PASSWORD, *SECRETS.values()]))
        program = tmp_path / "print_env.py"
        program.write_text(PRINT_ENV)
        command, report = probe_command(tmp_path, home, [API_TOKEN, DB_PASSWORD])
        with ApiClient(api.url, token=API_TOKEN, retries=0) as client:
            task = client.create_task("print the environment", "run", command=f"{PY} {program} {known}")
            probe = client.create_task("look for the secrets", "run", command=command)
            env = {**SECRETS, **HOLDING, "COHERENCE_TASK_ENV_PASSTHROUGH": "GH_TOKEN", "PLAIN_SETTING": "visible-value"}
            done = RunnerProcess(home, api.url, "--once", env=env).run()
            assert done.returncode == 0, done.stdout + done.stderr
            finished = client.get_task(task.id)
            assert finished.status == TaskStatus.COMPLETED
            assert client.get_task(probe.id).status == TaskStatus.COMPLETED
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
                "AWS_SECRET_ACCESS_KEY", *HOLDING} & set(seen), "the task was handed a secret"
    found = json.loads(report.read_text())
    assert found["leaks"] == [] and len(found["chain"]) == 2  # the task's guard and the runner (started by the test)
    assert {f"/proc/{pid}/environ" for pid in found["chain"]} <= set(found["checked"])
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


def test_a_runner_started_private_runs_tasks_with_the_umask_it_was_handed(served_api: ServedApi,
                                                                           tmp_path: Path) -> None:
    """A supervisor's children inherit its private umask, and the operator's in COHERENCE_TASK_UMASK."""
    made = tmp_path / "made_by_task.txt"
    with ApiClient(served_api.url, token="", retries=0) as client:
        task = client.create_task("write a file", "run", command=f"{PY} -c \"open('{made}', 'w').write('x')\"")
        previous = os.umask(0o077)
        try:
            done = RunnerProcess(served_api.home, served_api.url, "--once", env={"COHERENCE_TASK_UMASK": "027"}).run()
        finally:
            os.umask(previous)
        assert done.returncode == 0, done.stdout + done.stderr
        assert client.get_task(task.id).status == TaskStatus.COMPLETED
    assert stat.S_IMODE(made.stat().st_mode) == 0o640


@pytest.fixture(scope="module")
def supervised(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineProcess]:
    """A supervised API and runner as an operator runs them: on PostgreSQL with a password in DATABASE_URL (the
    test server trusts any), a token, and variables holding both."""
    url = urlsplit(postgres_server.new_database(migrated=True))
    database_url = url._replace(netloc=f"{url.username}:{DB_PASSWORD}@{url.hostname}:{url.port}").geturl()
    env = {"COHERENCE_API_TOKEN": API_TOKEN, "DATABASE_URL": database_url, "LEAKY_HEADER": HOLDING["LEAKY_HEADER"],
           "REPORTS_DSN": database_url.replace("+psycopg", "")}
    pipeline = PipelineProcess(tmp_path_factory.mktemp("supervised") / "home", "--components",
                               "api,agent_runner,monitor", env=env).start()
    try:
        pipeline.wait_started("supervisor", "api", "agent_runner", "monitor")
        wait_until(pipeline.api_up, 30, "the API answers")
        yield pipeline
    finally:
        pipeline.stop()


def test_no_route_from_a_supervised_task_reaches_the_token_or_the_database_password(
        supervised: PipelineProcess, tmp_path: Path) -> None:
    command, report = probe_command(tmp_path, supervised.home, [API_TOKEN, DB_PASSWORD])
    with ApiClient(supervised.url, token=API_TOKEN, retries=0) as client:
        task = client.create_task("look for the secrets", "run", command=command)
        wait_until(lambda: client.get_task(task.id).status == TaskStatus.COMPLETED, 30, "the probe done")
    found = json.loads(report.read_text())
    runner, supervisor = supervised.pid("agent_runner"), supervised.pid("supervisor")
    assert found["chain"][1:] == [runner, supervisor], [cmdline(pid) for pid in found["chain"]]
    assert set(found["components"]) == {runner, supervisor, supervised.pid("api"), supervised.pid("monitor")}
    assert {f"/proc/{pid}/{part}" for pid in found["chain"] + found["components"] for part in ("environ", "cmdline")} \
        <= set(found["checked"])
    assert any(where.startswith("logs/") for where in found["checked"])
    assert found["leaks"] == []
    # What the runbook promises on top: the runner was never handed DATABASE_URL, and the API's shows only stars.
    for other in (runner, supervised.pid("monitor")):
        assert b"DATABASE_URL=" not in Path(f"/proc/{other}/environ").read_bytes()
    assert f"DATABASE_URL={'*' * 8}".encode() in Path(f"/proc/{supervised.pid('api')}/environ").read_bytes()


def test_a_command_on_another_type_is_refused_at_create_with_the_setting_named(supervised: PipelineProcess) -> None:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    review = {"direction": "review it", "task_type": "review", "command": "sh -c id"}
    with httpx.Client(base_url=supervised.url, headers=headers, timeout=10) as http:
        before = http.get("/api/agent/tasks/count").json()["total"]
        one = http.post("/api/agent/tasks", json=review)
        batch = http.post("/api/agent/tasks/batch", json={"tasks": [
            {"direction": "fine", "task_type": "run", "command": "true"}, review]})
        assert http.get("/api/agent/tasks/count").json()["total"] == before  # nothing of the batch was written
    assert one.status_code == batch.status_code == 422
    assert one.json()["detail"][0]["loc"] == ["body", "command"]
    assert batch.json()["detail"][0]["loc"] == ["body", "tasks", 1, "command"]
    for answer in (one, batch):
        assert "COHERENCE_COMMAND_TASK_TYPES allows commands only for run tasks" in answer.json()["detail"][0]["msg"]
    with httpx.Client(base_url=supervised.url, timeout=10) as web:  # the console's form: the same rule, as a page
        assert web.post("/signin", data={"token": API_TOKEN}).status_code == 303
        csrf = re.search(r'name="csrf" value="([A-Za-z0-9_-]+)"', web.get("/tasks").text)
        assert csrf is not None
        page = web.post("/tasks", data={"csrf": csrf.group(1), "direction": "d", "task_type": "review",
                                         "command": "sh -c id"})
    assert page.status_code == 422 and "COHERENCE_COMMAND_TASK_TYPES allows commands only" in page.text


def test_a_runner_refuses_a_command_its_setting_does_not_allow(tmp_path: Path) -> None:
    """The API allows review commands, this runner (`--types review`, the default setting) does not: the task fails
    once, saying why, and the command never runs."""
    home = tmp_path / "home"
    api = ServedApi(home, env={"COHERENCE_COMMAND_TASK_TYPES": "run,review"}).start()
    ran = tmp_path / "ran"
    try:
        with ApiClient(api.url, token="", retries=0) as client:
            task = client.create_task("review it", "review", command=f"{PY} -c \"open('{ran}', 'w')\"")
            heal = httpx.post(f"{api.url}/api/agent/tasks",
                              json={"direction": "d", "task_type": "heal", "command": "x"})
            done = RunnerProcess(home, api.url, "--once", "--types", "review").run()
            assert done.returncode == 1, done.stdout + done.stderr
            failed = client.get_task(task.id)
    finally:
        api.stop()
    assert heal.status_code == 422 and "commands only for review, run tasks" in heal.json()["detail"][0]["msg"]
    assert (failed.status, failed.attempts, failed.exit_code) == (TaskStatus.FAILED, 1, None)
    assert "COHERENCE_COMMAND_TASK_TYPES allows commands only for run tasks" in failed.output
    assert "configuration error on this runner" in failed.output and not ran.exists()
