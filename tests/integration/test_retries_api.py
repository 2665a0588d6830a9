"""Retries that heal and the circuit breaker over HTTP, as operators meet them: a waiting runner's long poll gets
the retried task once its backoff ends (no write wakes it then), the failure's category everywhere a failed task
is shown (CLI, console), the out-of-attempts view, and the breaker on every signal (status, /metrics)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coherence_network.client import ApiClient
from coherence_network.clock import utcnow
from coherence_network.contract import Task, TaskStatus
from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.runner import RunnerProcess

CLI = [sys.executable, "-m", "coherence_network.cli"]
RECHECK = 30.0  # a waiting claim's safety-net look: only the due time can answer it sooner


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    served = ServedApi(tmp_path_factory.mktemp("retries") / "home", env={
        "COHERENCE_RETRY_DELAY_SECONDS": "0.6", "COHERENCE_CLAIM_RECHECK_SECONDS": str(RECHECK),
        "COHERENCE_BREAKER_FAILURES": "3"}).start()
    yield served
    served.stop()


def _coherence(api: ServedApi, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COHERENCE_HOME": str(api.home), "AGENT_API_BASE": api.url,
           "COHERENCE_HTTP_TIMEOUT": "5", "NO_COLOR": "1"}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60, cwd=Path.cwd())


def _claim_fail(client: ApiClient, task: Task, category: str, summary: str) -> Task:
    claimed = client.claim("r1", types=[task.task_type.value])
    assert claimed is not None and claimed.id == task.id
    return client.finish(task.id, claimed.claim_token, TaskStatus.FAILED, exit_code=1, output="it broke\n",
                         error_category=category, error_summary=summary)


def test_a_retriable_failure_comes_back_to_a_waiting_runner_and_succeeds(api: ServedApi) -> None:
    with ApiClient(api.url, token="") as client:
        task = client.create_task("fails until the provider is back", "run", command="false")
        first = client.claim("r1", types=["run"])
        assert first is not None
        got: list[Task | None] = []
        waiter = threading.Thread(target=lambda: got.append(ApiClient(api.url, token="").claim(
            "r2", types=["run"], wait_seconds=15)))
        waiter.start()  # r2 waits in a long poll before the failure
        assert api.app is not None
        wait_until(lambda: bool(api.app.state.work._waiters), 10, "r2 waiting")  # in its long poll's wait
        back = client.finish(task.id, first.claim_token, TaskStatus.FAILED, exit_code=1, output="503\n",
                             error_category="nonzero_exit", error_summary="exit 1: provider said 503")
        assert back.status == TaskStatus.PENDING and back.attempts == 1 and back.not_before is not None
        waiter.join(RECHECK)
        again = got[0]
        assert again is not None and again.id == task.id and again.claim_token == first.claim_token + 1
        assert utcnow() >= back.not_before and (utcnow() - back.not_before).total_seconds() < 5
        done = client.finish(task.id, again.claim_token, TaskStatus.COMPLETED, exit_code=0, output="ok\n")
        assert (done.status, done.attempts, done.error_category) == (TaskStatus.COMPLETED, 1, None)


def test_a_failure_shows_why_and_a_spent_one_is_out_of_attempts(api: ServedApi) -> None:
    with ApiClient(api.url, token="") as client:
        broken = _claim_fail(client, client.create_task("no agent here", "impl"), "config_error",
                             "agent command not found: claude")
        # a backoff of minutes for this type, so the page is read within it however loaded the machine is
        client.set_policy("test", by="test:retries", retry_delay_seconds=600, retry_max_delay_seconds=600)
        waiting = _claim_fail(client, client.create_task("flaky", "test", max_attempts=3), "timeout",
                              "timed out after 60 s")
        spent = _claim_fail(client, client.create_task("one go only", "heal", max_attempts=1), "killed",
                            "killed by signal 9")
        with httpx.Client(base_url=api.url) as web:  # at once: within the retry's backoff
            assert f"retrying at {waiting.not_before:%H:%M:%S} UTC after timeout: timed out after 60 s" in \
                web.get(f"/tasks/{waiting.id}").text
        page = client.list_tasks(out_of_attempts=True)
        assert [t.id for t in page.items] == [spent.id] and page.total == 1
        assert client.list_tasks(out_of_attempts=True, task_type="impl").total == 0
        client.set_policy("test", by="test:retries", clear=["retry_delay_seconds", "retry_max_delay_seconds"])
    assert broken.status == TaskStatus.FAILED and waiting.status == TaskStatus.PENDING
    shown = _coherence(api, "task", str(broken.id)).stdout
    assert "last failure: config_error: agent command not found: claude" in shown
    listed = _coherence(api, "tasks", "--status", "failed").stdout.splitlines()
    assert "killed" in listed[0] and "config_error" in listed[1]
    out = _coherence(api, "tasks", "--out-of-attempts").stdout.splitlines()
    assert out[0].startswith(f"#{spent.id}") and out[-1] == "1-1 of 1 tasks"
    with httpx.Client(base_url=api.url) as web:
        assert "config_error: agent command not found: claude" in web.get(f"/tasks/{broken.id}").text
        listing = web.get("/tasks", params={"out_of_attempts": "true"}).text
        assert f"/tasks/{spent.id}" in listing and f"/tasks/{broken.id}\"" not in listing
        assert "killed: killed by signal 9" in listing


def test_the_breaker_pauses_a_type_and_says_so_on_every_signal(api: ServedApi) -> None:
    with ApiClient(api.url, token="") as client:
        for n in range(3):
            _claim_fail(client, client.create_task(f"provider down {n}", "review"), "nonzero_exit", "exit 1")
        (pause,) = [p for p in client.pauses().pauses if p.scope == "review"]
        assert pause.by == "breaker" and "3 failed runs of review in a row" in pause.reason
        flags = {f.rule: f for f in client.pipeline_status().attention}
        assert flags["breaker_open"].severity == "high"
        assert flags["breaker_open"].command == "coherence resume --type review"
        assert client.claim("r1", types=["review"]) is None  # the retries wait, paused
    status = _coherence(api, "status")
    assert status.returncode == 1 and "breaker_open: the circuit breaker paused review" in status.stdout
    metrics = httpx.get(f"{api.url}/metrics").text
    assert 'coherence_health_issues{rule="breaker_open"} 1.0' in metrics
    assert 'coherence_breaker_open{type="review"} 1.0' in metrics
    assert 'coherence_breaker_open{type="run"} 0.0' in metrics
    resumed = _coherence(api, "resume", "--type", "review")
    assert resumed.returncode == 0, resumed.stderr
    with ApiClient(api.url, token="") as client:
        assert "breaker_open" not in {f.rule for f in client.pipeline_status().attention}


def test_a_task_whose_runner_died_heals_on_another_runner_after_its_backoff(tmp_path: Path) -> None:
    """Real runners: the one running the task is killed; the reaper fails the run as lease_expired, the task waits
    out its backoff and the other runner, waiting in its long poll, completes it. Nobody acts."""
    lease = {"COHERENCE_LEASE_SECONDS": "2"}
    served = ServedApi(tmp_path / "home", env={**lease, "COHERENCE_CLAIM_RECHECK_SECONDS": str(RECHECK)}).start()
    marker = tmp_path / "runs"
    code = (f"import time; open({str(marker)!r},'a').write('x'); "
            f"time.sleep(0 if len(open({str(marker)!r}).read())>1 else 20)")
    doomed = RunnerProcess(served.home, served.url, env=lease).start()
    survivor: RunnerProcess | None = None
    try:
        with ApiClient(served.url, token="") as client:
            task = client.create_task("outlives its runner", "run", command=f'{sys.executable} -c "{code}"')
            wait_until(marker.exists, 30, "the first run started")
            survivor = RunnerProcess(served.home, served.url, env=lease).start()
            doomed.signal(signal.SIGKILL)
            doomed.wait()
            wait_until(lambda: client.get_task(task.id).status == TaskStatus.COMPLETED, 30, "healed on its own")
            healed = client.get_task(task.id)
        assert (healed.attempts, healed.claim_token, healed.error_category) == (1, 2, None)
        assert marker.read_text() == "xx"
    finally:
        for runner in (doomed, survivor):
            if runner is not None:
                runner.stop()
        served.stop()


def test_a_real_runner_heals_a_nonzero_exit_and_leaves_a_config_error_failed(api: ServedApi, tmp_path: Path) -> None:
    """The runner's own categories drive the retry: a command that exits 3 once (nonzero_exit, retriable) comes back
    after its backoff and completes on its second run; a program that cannot start (config_error) stays failed."""
    marker = tmp_path / "ran"
    code = (f"import os, sys; p = {str(marker)!r}; first = not os.path.exists(p); open(p, 'a').close(); "
            "sys.exit(3 if first else 0)")
    runner = RunnerProcess(api.home, api.url).start()
    try:
        with ApiClient(api.url, token="") as client:
            flaky = client.create_task("fails once", "run", command=f'{sys.executable} -c "{code}"')
            broken = client.create_task("cannot start", "run", command=str(tmp_path / "no-such-program"))
            wait_until(lambda: client.get_task(flaky.id).status == TaskStatus.COMPLETED, 60, "healed on its own")
            wait_until(lambda: client.get_task(broken.id).status == TaskStatus.FAILED, 60, "the broken one settled")
            healed, failed = client.get_task(flaky.id), client.get_task(broken.id)
        assert (healed.attempts, healed.claim_token, healed.error_category) == (1, 2, None)
        assert (failed.error_category, failed.attempts, failed.not_before) == ("config_error", 1, None)
        assert failed.error_summary
    finally:
        runner.stop()
