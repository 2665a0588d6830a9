"""Stalls end to end: a real runner runs a task that prints once and goes silent. Its silence reaches the API with
every lease renewal, the rule stalled_task flags it, the runbook's drill shows it and cancels it; with a small stop
limit the runner stops such a task itself and it fails as stalled, its process group gone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import ErrorCategory, Task, TaskStatus
from tests.runbook.drill import Drill
from tests.runbook.runbook_doc import Runbook
from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.runner import RunnerProcess, group_gone, task_group

LEASE = 3.0  # the runner renews every LEASE / 3 s, each renewal carrying the task's silence
WARN = "1"
# Prints one line, then waits silently on a child of its own (the process group holds both).
SILENT = "sh -c 'echo started; sleep 300 & wait'"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    served = ServedApi(tmp_path / "home", env={"COHERENCE_LEASE_SECONDS": str(LEASE),
                                               "COHERENCE_STALL_WARN_SECONDS": WARN}).start()
    yield served
    served.stop()


def _flagged(api: ServedApi, task_id: int) -> dict[str, object] | None:
    status = httpx.get(f"{api.url}/api/agent/pipeline-status").json()
    flags = [f for f in status["attention"] if f["rule"] == "stalled_task" and task_id in f["task_ids"]]
    return flags[0] if flags else None


def _silence(api: ServedApi, task_id: int) -> float:
    status = httpx.get(f"{api.url}/api/agent/pipeline-status").json()
    return float(next(t["silent_seconds"] for t in status["running"] if t["id"] == task_id))


def test_drill_a_task_flagged_stalled_is_seen_then_cancelled(api: ServedApi) -> None:
    drill = Drill(api.home, api.port, env={"COHERENCE_STALL_WARN_SECONDS": WARN})
    runner = RunnerProcess(api.home, api.url, env={"COHERENCE_STALL_STOP_SECONDS": "0"}).start()
    client = ApiClient(api.url, retries=0)
    try:
        task = client.create_task("waits for input", "run", command=SILENT)
        wait_until(lambda: _flagged(api, task.id) is not None, 30, "the rule stalled_task flags the task")
        stored = client.get_task(task.id)
        assert stored.status == TaskStatus.RUNNING and stored.last_output_at is not None
        first = _silence(api, task.id)
        # Three renewals later the output time has stayed put: each renewal sets it from the runner's silence, so
        # it wobbles by the renewal's time in transit (up to a second under load), where one taken from the
        # renewal's own time would have moved by the whole lease.
        wait_until(lambda: _silence(api, task.id) > first + LEASE, 15, "the silence grows")
        assert abs((client.get_task(task.id).last_output_at - stored.last_output_at).total_seconds()) < LEASE / 2
        flag = _flagged(api, task.id)
        assert flag is not None and flag["command"] == f"coherence logs {task.id}" and flag["severity"] == "medium"
        scraped = httpx.get(f"{api.url}/metrics").text
        gauge = re.search(r'^coherence_task_silence_seconds\{task_type="run"\} ([0-9.e+]+)$', scraped, re.M)
        assert gauge is not None and float(gauge.group(1)) > 1
        pgid = task_group(api.home, task.id)
        assert pgid is not None
        console = httpx.get(f"{api.url}/tasks/{task.id}").text
        assert re.search(r'id="silence">Output: silent for \d+ s \(STALLED\)', console)
        assert re.search(r'class="stalled">silent for \d+ s \(STALLED\)</td>', httpx.get(f"{api.url}/").text)

        status, detail, logs, cancel = (c.replace("{id}", str(task.id))
                                        for c in Runbook().drill("stalled-task").commands())
        shown = drill.run(status, check=False)
        assert shown.returncode == 0, shown.stderr  # a medium flag is a warning: exit 0
        assert re.search(rf"running #{task.id} run .*silent for \d+ s \(STALLED\)", shown.stdout), shown.stdout
        assert "stalled_task" in shown.stdout
        assert re.search(r"^output: silent for \d+ s \(STALLED\)$", drill.run(detail).stdout, re.M)
        assert "started" in drill.run(logs).stdout
        drill.run(cancel)
        wait_until(lambda: group_gone(pgid), 10, "the cancelled task's process group gone")
        wait_until(lambda: client.get_task(task.id).status == TaskStatus.CANCELLED, 10, "task cancelled")
        assert _flagged(api, task.id) is None
    finally:
        client.close()
        runner.stop()
        drill.close()


def test_a_task_silent_past_the_stop_limit_is_stopped_as_stalled(api: ServedApi) -> None:
    runner = RunnerProcess(api.home, api.url, env={"COHERENCE_STALL_STOP_SECONDS": "2",
                                                   "AGENT_KILL_GRACE_SECONDS": "1"}).start()
    client = ApiClient(api.url, retries=0)
    try:
        task = client.create_task("hangs", "run", command=SILENT, max_attempts=1)
        wait_until(lambda: task_group(api.home, task.id) is not None, 30, "task running")
        pgid = task_group(api.home, task.id)
        assert pgid is not None
        wait_until(lambda: client.get_task(task.id).status == TaskStatus.FAILED, 30, "task failed")
        wait_until(lambda: group_gone(pgid), 10, "the stalled task's process group gone")
        done: Task = client.get_task(task.id)
        assert done.error_category == ErrorCategory.STALLED
        assert done.error_summary is not None
        assert re.fullmatch(r"stalled: no output for \d+s, stopped: started", done.error_summary)
        assert "COHERENCE_STALL_STOP_SECONDS=2" in done.output
        assert runner.proc is not None and runner.proc.poll() is None  # the runner goes on
    finally:
        client.close()
        runner.stop()
