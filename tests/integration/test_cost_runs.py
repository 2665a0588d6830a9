"""Usage and the task cap with real runner processes against a real API: an agent's COHERENCE_USAGE line lands in
the task and the sums however long its output, and a run whose reported cost passes the task cap is stopped and
fails with over_budget (no retry)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import ErrorCategory, TaskStatus
from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.runner import RunnerProcess

PY = sys.executable
# Reports its usage first, then prints far more than the output tail keeps.
LONG_TALKER = """
print('COHERENCE_USAGE {"input_tokens": 1500, "output_tokens": 400, "cost_usd": 0.125}', flush=True)
for n in range(3000):
    print(f"line {n} of a long run")
"""
# Reports its usage as it goes (cumulative), past a 0.5 cap on its second step, then would go on for minutes.
SPENDER = """
import time
print('COHERENCE_USAGE {"input_tokens": 100, "output_tokens": 10, "cost_usd": 0.25}', flush=True)
time.sleep(0.3)
print('COHERENCE_USAGE {"input_tokens": 900, "output_tokens": 90, "cost_usd": 0.75}', flush=True)
time.sleep(300)
"""

# Reports its cost so far, then runs on until the test lets it finish (a file appears).
REPORTS_THEN_WAITS = """
import os, sys, time
print('COHERENCE_USAGE {"cost_usd": 0.25}', flush=True)
while not os.path.exists(os.environ["FINISH_FLAG"]):
    time.sleep(0.05)
"""


@pytest.fixture
def client(served_api: ServedApi) -> Iterator[ApiClient]:
    with ApiClient(served_api.url, token="", retries=0) as c:
        yield c


def _runner(api: ServedApi, agent: Path) -> RunnerProcess:
    return RunnerProcess(api.home, api.url, "--once", env={"AGENT_KILL_GRACE_SECONDS": "1",
                                                          "COHERENCE_AGENT_COMMAND": f"{PY} {agent} {{prompt_file}}"})


def test_usage_reported_early_in_a_long_run_lands_in_the_task_and_the_sums(
        served_api: ServedApi, client: ApiClient, tmp_path: Path) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(LONG_TALKER)
    task = client.create_task("talk a lot", "impl")
    quiet = client.create_task("says nothing of cost", "run", command=f"{PY} -c pass")
    counted = client.create_task("a command that reports", "run", command=f"{PY} -c \"print('COHERENCE_USAGE "
                                 "{\\\"cost_usd\\\": 0.5}')\"")
    assert _runner(served_api, agent).run().returncode == 0
    done = client.get_task(task.id)
    assert done.status == TaskStatus.COMPLETED and "COHERENCE_USAGE" not in done.output  # long gone from the tail
    assert (done.agent, done.model, done.tokens_in, done.tokens_out, done.cost_usd) == ("custom", None, 1500, 400,
                                                                                         0.125)
    silent, reported = client.get_task(quiet.id), client.get_task(counted.id)
    assert (silent.agent, silent.cost_usd, silent.tokens_in) == (None, None, None)
    assert (reported.agent, reported.cost_usd) == (None, 0.5)
    spend = client.spend()
    assert (spend.today.cost_usd, spend.today.runs, spend.today.tokens_in) == (0.625, 2, 1500)
    assert {a.agent: a.cost_usd for a in spend.agents} == {None: 0.5, "custom": 0.125}
    shown = subprocess.run([PY, "-m", "coherence_network.cli", "task", str(task.id)], capture_output=True, text=True,
                           env={**os.environ, "COHERENCE_HOME": str(served_api.home), "AGENT_API_BASE": served_api.url},
                           timeout=60)
    assert "usage: custom, tokens 1500 in, 400 out, $0.1250" in shown.stdout, shown.stdout + shown.stderr
    page = httpx.get(f"{served_api.url}/tasks/{task.id}").text  # the console's task page
    assert '<th scope="row">tokens in</th><td class="text">1500</td>' in page
    assert '<th scope="row">cost</th><td class="text">$0.1250</td>' in page


def test_a_run_past_the_task_cap_is_stopped_and_fails_over_budget(
        served_api: ServedApi, client: ApiClient, tmp_path: Path) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(SPENDER)
    client.set_caps(by="test:ops", task=0.5)  # the runner's own setting says no cap: the API's is in force
    task = client.create_task("spend too much", "impl", max_attempts=3)
    done = _runner(served_api, agent).run(timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    failed = client.get_task(task.id)
    assert (failed.status, failed.error_category) == (TaskStatus.FAILED, ErrorCategory.OVER_BUDGET)
    assert "past the task cap $0.5" in (failed.error_summary or "")
    assert failed.cost_usd == 0.75 and failed.attempts == 1 and failed.not_before is None  # not retried
    assert client.spend().today.cost_usd == 0.75


def test_a_running_runs_reported_cost_reaches_the_day_spend_with_its_lease_renewals(tmp_path: Path) -> None:
    api = ServedApi(tmp_path / "home", env={"COHERENCE_LEASE_SECONDS": "1.5"}).start()  # a renewal every 0.5 s
    agent, flag = tmp_path / "agent.py", tmp_path / "finish.flag"
    agent.write_text(REPORTS_THEN_WAITS)
    runner = _runner(api, agent)
    runner.env["FINISH_FLAG"] = str(flag)
    try:
        with ApiClient(api.url, token="", retries=0) as client:
            client.create_task("report as you go", "impl")
            runner.start()
            wait_until(lambda: client.spend().today.running_usd == 0.25, 20, "the heartbeat carries the cost")
            assert client.spend().today.cost_usd == 0.0
            flag.touch()
            assert runner.wait(30) == 0
            today = client.spend().today
            assert (today.cost_usd, today.running_usd, today.runs) == (0.25, 0.0, 1)
    finally:
        runner.stop()
        api.stop()
