"""`coherence create` against the API, with a token: the task it makes, its idempotency key (a retried
create, or an answer lost on the way back, makes one task), and one-line errors with exit 2 for bad input, 1 for
other refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from coherence_network.client import ApiClient
from tests.support.api import ServedApi
from tests.support.lossy_proxy import LossyProxy

CLI = [sys.executable, "-m", "coherence_network.cli"]
TOKEN = "create-test-token-0123456789"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    started = ServedApi(tmp_path_factory.mktemp("create") / "home", env={"COHERENCE_API_TOKEN": TOKEN}).start()
    yield started
    started.stop()


def _coherence(api: ServedApi, *args: str, stdin: str | None = None, url: str | None = None,
               **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COHERENCE_HOME": str(api.home), "AGENT_API_BASE": url or api.url,
           "COHERENCE_API_TOKEN": TOKEN, "COHERENCE_HTTP_TIMEOUT": "5", **extra}
    return subprocess.run([*CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def _one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "[{" not in done.stderr, done.stderr
    return done.stderr.strip()


def test_create_makes_the_task_with_its_fields_and_prints_its_key(api: ServedApi) -> None:
    command = "sh -c 'echo \"$HOME\"; exit 3' ; rm -rf /nowhere"  # stored as given: nothing here runs a shell
    done = _coherence(api, "create", "report the home folder", "--command", command, "--priority", "7",
                      "--max-attempts", "2", "--timeout", "90")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    task_id = int(line.split()[1].rstrip(":"))
    key = line.split("idempotency key ")[1].split(":")[0]
    assert line.startswith(f"task {task_id}: run, pending, priority 7") and len(key) == 32
    with ApiClient(api.url, token=TOKEN) as client:
        stored = client.get_task(task_id)
    assert (stored.direction, stored.command, stored.priority, stored.max_attempts, stored.timeout_seconds,
            stored.idempotency_key) == ("report the home folder", command, 7, 2, 90.0, key)

    agent = json.loads(_coherence(api, "create", "--direction", "write the spec", "--type", "spec", "--json").stdout)
    assert agent["task_type"] == "spec" and agent["command"] is None and agent["status"] == "pending"
    piped = json.loads(_coherence(api, "create", "-", "--command", "true", "--json",
                                  stdin="a direction\nof two lines\n").stdout)
    assert piped["direction"] == "a direction\nof two lines"


def test_the_same_key_gives_the_same_task_and_a_lost_answer_makes_one_task(api: ServedApi) -> None:
    first = _coherence(api, "create", "nightly report", "--command", "true", "--idempotency-key", "nightly-1", "--json")
    again = _coherence(api, "create", "nightly report", "--command", "true", "--idempotency-key", "nightly-1", "--json")
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert json.loads(first.stdout)["id"] == json.loads(again.stdout)["id"]
    other = _one_line_error(_coherence(api, "create", "another task", "--command", "true", "--idempotency-key",
                                       "nightly-1"), 1)
    assert other.startswith("the API refused the create:") and "nightly-1" in other

    with ApiClient(api.url, token=TOKEN) as client:
        before = client.count_tasks().total
    proxy = LossyProxy(api.port)
    try:
        proxy.lose_next(1)  # the API makes the task, its answer never arrives: the CLI's client sends it again
        lost = _coherence(api, "create", "made once", "--command", "true", "--json", url=proxy.url)
    finally:
        proxy.close()
    assert lost.returncode == 0 and proxy.lost == 1, lost.stderr
    with ApiClient(api.url, token=TOKEN) as client:
        assert client.count_tasks().total == before + 1
        assert client.get_task(json.loads(lost.stdout)["id"]).direction == "made once"


@pytest.mark.parametrize(("args", "expected"), [
    (["create", "x", "--command", "true", "--priority", "5000"],
     "the API refused the request as malformed: --priority: Input should be less than or equal to 1000 (got 5000)"),
    (["create", "x", "--command", "true", "--max-attempts", "0", "--timeout", "-1"],
     ("the API refused the request as malformed: --max-attempts: Input should be greater than or equal to 1 (got 0); "
      "--timeout: Input should be greater than 0 (got -1.0)")),
    (["create", "", "--command", "true"],
     "the API refused the request as malformed: DIRECTION: String should have at least 1 character (got '')"),
    (["create", "x", "--type", "spec", "--command", "ls"],
     ("the API refused the request as malformed: --command: a spec task may not carry a command: "
      "COHERENCE_COMMAND_TASK_TYPES allows commands only for run tasks (got 'ls')")),
    (["create", "x"], "a run task needs --command"),
    (["create"], "give the direction once"),
    (["create", "x", "--direction", "y", "--command", "true"], "give the direction once"),
    (["task", "--", "-1"],
     "the API refused the request as malformed: task_id: Input should be greater than or equal to 1 (got '-1')"),
], ids=["priority", "attempts-and-timeout", "empty-direction", "command-not-allowed", "run-without-command",
        "no-direction", "two-directions", "negative-task-id"])
def test_bad_input_is_one_readable_line_and_exit_2(api: ServedApi, args: list[str], expected: str) -> None:
    assert _one_line_error(_coherence(api, *args), 2).startswith(expected)


def test_a_wrong_token_is_one_line_and_exit_1(api: ServedApi) -> None:
    refused = _one_line_error(_coherence(api, "create", "x", "--command", "true",
                                         COHERENCE_API_TOKEN="wrong-token-0123456789"), 1)
    assert refused.startswith("the API refused the token")
