"""The operator's verbs (`coherence tasks`, `task`, `logs`, `decide`, `retry`, `restart`, `status --watch`) against the
API over HTTP: output, exit codes (0 ok, 1 needs attention or refused, 2 usage), colour and help."""

from __future__ import annotations

import json
import os
import pty
import pwd
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import Task, TaskStatus
from tests.support.api import ServedApi
from tests.support.net import wait_until

CLI = [sys.executable, "-m", "coherence_network.cli"]
ANSI = "\x1b["


def _env(api: ServedApi, **extra: str) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if name != "NO_COLOR"}
    return {**inherited, "COHERENCE_HOME": str(api.home), "AGENT_API_BASE": api.url, "COHERENCE_HTTP_TIMEOUT": "5",
            **extra}


def _coherence(api: ServedApi, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=_env(api, **extra), capture_output=True, text=True, timeout=60)


class Streamed:
    """A command whose output is read line by line as it comes (followers and watchers never end by themselves)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, count: int = 1) -> None:
        wait_until(lambda: sum(text in line for line in self.lines) >= count, 30, f"{text!r} x{count} in the output")

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit code and what went to stderr."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        self._reader.join(10)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def finish(self) -> tuple[int, str]:
        code = self.proc.wait(30)
        self._reader.join(10)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()


def _on_terminal(args: list[str], env: dict[str, str]) -> str:
    """What a command prints when its output is a terminal (a pseudo-terminal here)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, env=env, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(30)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def _waiting(client: ApiClient, question: str) -> Task:
    task = client.create_task(question, "run", command="true")
    claim = client.claim("verbs", types=["run"])
    assert claim is not None and claim.id == task.id
    return client.finish(task.id, claim.claim_token, TaskStatus.NEEDS_DECISION, decision_prompt=question)


def _failed(client: ApiClient, direction: str) -> Task:
    task = client.create_task(direction, "run", command="false")
    claim = client.claim("verbs", types=["run"])
    assert claim is not None and claim.id == task.id
    return client.finish(task.id, claim.claim_token, TaskStatus.FAILED, exit_code=3, output="boom\n")


def test_tasks_lists_newest_first_filters_pages_and_totals(served_api: ServedApi) -> None:
    with ApiClient(served_api.url, token="") as client:
        failed = _failed(client, "a task that fails")
        spec = client.create_task("write the spec " + "x" * 200, "spec")
        newest = client.create_task("the newest one", "run", command="true")
    listed = _coherence(served_api, "tasks")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == [f"#{newest.id}", f"#{spec.id}", f"#{failed.id}"]
    assert lines[-1] == "1-3 of 3 tasks"
    assert "spec" in lines[1] and "pending" in lines[1] and len(lines[1]) < 120  # a long direction is cut short
    assert ANSI not in listed.stdout  # piped: no colour
    only_failed = _coherence(served_api, "tasks", "--status", "failed").stdout.splitlines()
    assert len(only_failed) == 2 and only_failed[0].startswith(f"#{failed.id}") and "failed" in only_failed[0]
    assert _coherence(served_api, "tasks", "--type", "spec").stdout.splitlines()[0].startswith(f"#{spec.id}")
    page = _coherence(served_api, "tasks", "--limit", "1", "--offset", "1").stdout.splitlines()
    assert page[0].startswith(f"#{spec.id}") and page[-1] == "2-2 of 3 tasks"
    as_json = json.loads(_coherence(served_api, "tasks", "--json", "--status", "pending").stdout)
    assert as_json["total"] == 2 and [t["id"] for t in as_json["items"]] == [newest.id, spec.id]
    assert _coherence(served_api, "tasks", "--status", "bogus").returncode == 2


def test_task_decide_and_the_decision_trail(served_api: ServedApi) -> None:
    with ApiClient(served_api.url, token="") as client:
        waiting = _waiting(client, "Deploy to prod?")
        other = _waiting(client, "Which colour?")
    before = _coherence(served_api, "task", str(waiting.id))
    assert before.returncode == 0, before.stderr
    assert "status: needs_decision" in before.stdout and "decision_prompt: Deploy to prod?" in before.stdout
    assert f"coherence decide {waiting.id}" in before.stdout  # it says how to answer
    assert "run: 1 (claim token), attempts: 0 of 3" in before.stdout

    decided = _coherence(served_api, "decide", str(waiting.id), "yes")
    user = pwd.getpwuid(os.getuid()).pw_name
    assert decided.returncode == 0, decided.stderr
    assert decided.stdout.strip() == f"task {waiting.id}: decision 'yes' recorded by cli:{user}; now pending"
    after = _coherence(served_api, "task", str(waiting.id)).stdout
    assert "decision: yes" in after and f"decided_by: cli:{user}" in after and "decided_at: 20" in after
    stored = json.loads(_coherence(served_api, "task", str(waiting.id), "--json").stdout)
    assert stored["decided_by"] == f"cli:{user}" and stored["status"] == "pending"

    refused = _coherence(served_api, "decide", str(waiting.id), "no")
    assert refused.returncode == 1
    assert f"task {waiting.id} does not wait for a decision" in refused.stderr and "pending" in refused.stderr
    assert "Traceback" not in refused.stderr
    by = json.loads(_coherence(served_api, "decide", str(other.id), "blue", "--by", "alice", "--json").stdout)
    assert by["decided_by"] == "alice" and by["decision"] == "blue"
    assert _coherence(served_api, "task", "999").returncode == 1
    assert _coherence(served_api, "decide", "999", "yes").returncode == 1
    assert _coherence(served_api, "decide", str(other.id)).returncode == 2  # no answer: usage error


def test_retry_sends_a_failed_task_back_and_refuses_any_other(served_api: ServedApi) -> None:
    with ApiClient(served_api.url, token="") as client:
        failed = _failed(client, "flaky")
    detail = _coherence(served_api, "task", str(failed.id)).stdout
    assert "exit_code: 3" in detail and "output (tail):\nboom" in detail
    retried = _coherence(served_api, "retry", str(failed.id))
    assert retried.returncode == 0 and f"task {failed.id}: now pending" in retried.stdout
    again = _coherence(served_api, "retry", str(failed.id))
    assert again.returncode == 1 and "cannot be retried (only a failed or cancelled task can)" in again.stderr
    assert "Traceback" not in again.stderr


def test_logs_of_a_task_and_following_it_until_it_is_settled(served_api: ServedApi) -> None:
    with ApiClient(served_api.url, token="") as client:
        task = client.create_task("log lines", "run", command="true")
        claim = client.claim("verbs")
        assert claim is not None
        log = served_api.home / "logs" / f"task_{task.id}.log"
        log.write_text("one\ntwo\nthree\n")
        tail = _coherence(served_api, "logs", str(task.id), "--lines", "2")
        assert tail.returncode == 0 and tail.stdout == "two\nthree\n"

        follower = Streamed([*CLI, "logs", str(task.id), "--follow", "--lines", "1"], _env(served_api))
        follower.wait_for("three")
        with log.open("a") as handle:
            handle.write("four\n")
        follower.wait_for("four")  # printed while the task still runs
        with log.open("a") as handle:
            handle.write("footer: exit 0\n")
        client.finish(task.id, claim.claim_token, TaskStatus.COMPLETED, exit_code=0)
        code, err = follower.finish()
    assert code == 0 and f"task {task.id} is completed (exit code 0)" in err
    assert follower.lines == ["three", "four", "footer: exit 0"]


def test_logs_of_a_component_follow_through_rotation(served_api: ServedApi) -> None:
    log = served_api.home / "logs" / "monitor.log"
    log.write_text("one\ntwo\nthree\n")
    assert _coherence(served_api, "logs", "monitor", "-n", "1").stdout == "three\n"
    follower = Streamed([*CLI, "logs", "monitor", "--follow", "--lines", "2"], _env(served_api))
    follower.wait_for("three")
    with log.open("a") as handle:
        handle.write("four\n")
    follower.wait_for("four")
    log.rename(log.with_name("monitor.log.1"))  # what the rotating handler does
    log.write_text("five\n")
    follower.wait_for("five")
    code, err = follower.interrupt()
    assert code == 0 and "Traceback" not in err and "Aborted" not in err
    assert follower.lines == ["two", "three", "four", "five"]

    unknown = _coherence(served_api, "logs", "nonsense")
    assert unknown.returncode == 2 and "agent_runner" in unknown.stderr and "supervisor" in unknown.stderr
    missing = _coherence(served_api, "logs", "telegram")
    assert missing.returncode == 1 and "no log yet" in missing.stderr


def test_restart_needs_a_supervisor_and_a_known_component(served_api: ServedApi) -> None:
    request = served_api.home / "logs" / "restart_requested.json"
    alone = _coherence(served_api, "restart", "agent_runner")
    assert alone.returncode == 1 and "no supervisor runs" in alone.stderr and "nothing would act" in alone.stderr
    assert not request.exists()
    unknown = _coherence(served_api, "restart", "telegram")
    assert unknown.returncode == 2 and "api, agent_runner, project_manager, monitor, all" in unknown.stderr
    # a supervisor that runs and acts on the request: tests/runbook/test_drills.py (restart-component)


def test_status_watch_redraws_until_ctrl_c(served_api: ServedApi) -> None:
    watcher = Streamed([*CLI, "status", "--watch", "--interval", "0.2"], _env(served_api))
    watcher.wait_for("ATTENTION", count=2)
    code, err = watcher.interrupt()
    assert code == 0 and "Traceback" not in err and "Aborted" not in err


def test_colour_on_a_terminal_only_and_never_with_no_color(served_api: ServedApi) -> None:
    with ApiClient(served_api.url, token="") as client:
        _failed(client, "red on a terminal")
    coloured = _on_terminal([*CLI, "tasks"], _env(served_api))
    assert ANSI in coloured and "red on a terminal" in coloured
    plain = _on_terminal([*CLI, "tasks"], _env(served_api, NO_COLOR="1"))
    assert ANSI not in plain and "red on a terminal" in plain


def test_help_shows_whole_defaults_and_offers_completion(served_api: ServedApi) -> None:
    narrow = _coherence(served_api, "runner", "--help", COLUMNS="80")
    assert narrow.returncode == 0 and "COHERENCE_RUNNER_STOP_GRACE_SECONDS" in narrow.stdout
    assert "…" not in narrow.stdout
    assert "--install-completion" in _coherence(served_api, "--help").stdout
    for verb in ("tasks", "task", "logs", "decide", "retry", "restart", "status"):
        assert _coherence(served_api, verb, "--help").returncode == 0


@pytest.mark.parametrize("args", [["tasks", "--limit", "0"], ["logs"], ["retry", "x"], ["restart"]])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    done = subprocess.run([*CLI, *args], env={**os.environ, "COHERENCE_HOME": str(tmp_path)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
