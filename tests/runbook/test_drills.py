"""Drills: the runbook's procedures carried out command by command from the file itself."""

from __future__ import annotations

import json
import os
import pwd
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coherence_network import fatal
from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus
from coherence_network.settings import Settings
from tests.runbook.drill import Drill
from tests.runbook.runbook_doc import ROOT, Runbook
from tests.support.api import ApiProcess, ServedApi
from tests.support.fixture_registry import FixtureRegistry
from tests.support.net import free_port, wait_until
from tests.support.pipeline import PipelineProcess, alive
from tests.support.runner import RunnerProcess


@pytest.fixture(scope="module")
def runbook() -> Runbook:
    return Runbook()


@pytest.fixture
def drill(tmp_path: Path) -> Iterator[Drill]:
    one = Drill(tmp_path / "home", free_port())
    yield one
    one.close()


@pytest.fixture
def api(drill: Drill) -> Iterator[ApiProcess]:
    """The API the drill works against, on the drill's port and COHERENCE_HOME."""
    server = ApiProcess(drill.home, port=drill.port).start()
    yield server
    server.stop()


def test_drill_api_restart_keeps_the_data(runbook: Runbook, drill: Drill, api: ApiProcess) -> None:
    created = [httpx.post(f"{api.url}/api/agent/tasks", json={"direction": f"keep {i}", "task_type": "run"}).json()
               for i in range(5)]
    old_pid = api.proc.pid  # type: ignore[union-attr]
    results = [result for step in ("api-stop", "api-start", "api-verify") for result in
               drill.run_block(runbook.drill(step))]
    assert json.loads(results[-1].stdout)["ready"] is True
    assert api.proc.wait(30) == 0  # the old API was stopped gracefully, found by its socket
    new_pid = int((drill.home / "run" / "api.pid").read_text())
    assert new_pid != old_pid
    with ApiClient(api.url, token="") as client:
        for task in created:
            assert client.get_task(task["id"]).direction == task["direction"]


def test_drill_api_restart_under_the_supervisor_ends_supervised(runbook: Runbook, tmp_path: Path) -> None:
    """Step 3 is skipped under the supervisor: the API stopped by step 2 comes back as the supervisor's child."""
    pipeline = PipelineProcess(tmp_path / "home", "--components", "api,agent_runner").start()
    drill = Drill(pipeline.home, pipeline.port, env={"SUPERVISOR_BACKOFF_SECONDS": "0.1"})
    try:
        pipeline.wait_started("api", "agent_runner")
        old_pid = pipeline.pid("api")
        drill.run_block(runbook.drill("api-stop"))
        wait_until(lambda: not alive(old_pid), 10, "the old API gone")  # it let go of its lock on the way out
        results = drill.run_block(runbook.drill("api-verify"))
        assert json.loads(results[-1].stdout)["ready"] is True
        wait_until(lambda: alive(pipeline.pid("api")), 30, "the new API's PID file")
        new_pid = pipeline.pid("api")
        assert new_pid != old_pid
        parent = int(Path(f"/proc/{new_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert parent == pipeline.proc.pid  # type: ignore[union-attr]
        log = (pipeline.home / "logs" / "supervisor.log").read_text()
        assert "api exited with 0" in log and "restarting api now (a clean exit, not counted as a crash)" in log
    finally:
        drill.close()
        pipeline.stop()


def test_drill_cleanup_removes_only_old_logs_of_finished_tasks(runbook: Runbook, drill: Drill, api: ApiProcess) -> None:
    with ApiClient(api.url, token="") as client:
        finished = client.create_task("finished", "run")
        running = client.create_task("running", "run")
        fresh = client.create_task("fresh", "run")
        claim = client.claim("drill")
        client.finish(claim.id, claim.claim_token, "completed", exit_code=0)
        client.claim("drill")  # `running` stays running
        claim = client.claim("drill")
        client.finish(claim.id, claim.claim_token, "failed", exit_code=1)
    logs = drill.home / "logs"
    old = time.time() - 30 * 86400
    for task in (finished, running, fresh):
        path = logs / f"task_{task.id}.log"
        path.write_text("output\n")
        if task is not fresh:
            os.utime(path, (old, old))
    dry_run, real_run = runbook.drill("cleanup").commands()
    assert "--dry-run" in dry_run
    assert f"would remove task_{finished.id}.log" in drill.run(dry_run).stdout
    assert (logs / f"task_{finished.id}.log").exists()  # --dry-run removed nothing
    assert f"removed task_{finished.id}.log" in drill.run(real_run).stdout
    assert not (logs / f"task_{finished.id}.log").exists()
    assert (logs / f"task_{running.id}.log").exists() and (logs / f"task_{fresh.id}.log").exists()


def test_drill_unblock_decision_with_the_documented_verbs(runbook: Runbook, drill: Drill, api: ApiProcess) -> None:
    """The waiting-decisions drill first (the oldest decision's age in status and on /metrics), then the answer."""
    with ApiClient(api.url, token="") as client:
        task = client.create_task("deploy", "run", command="true")
        claim = client.claim("drill")
        client.finish(task.id, claim.claim_token, TaskStatus.NEEDS_DECISION, decision_prompt="Deploy to prod?")
        status, waiting, gauge = runbook.drill("waiting-decisions").commands()  # how old the oldest is, everywhere
        assert "decisions waiting: 1, the oldest for " in drill.run(status, check=False).stdout
        assert drill.run(waiting).stdout.startswith(f"#{task.id} ")
        (sample,) = drill.run(gauge).stdout.splitlines()
        assert sample.startswith("coherence_oldest_decision_age_seconds ") and float(sample.split()[1]) > 0
        listing, answer = runbook.drill("unblock-decision").commands()
        (line, total) = drill.run(listing).stdout.splitlines()
        assert line.startswith(f"#{task.id} ") and line.endswith("asks: Deploy to prod?") and total == "1-1 of 1 tasks"
        assert "{id}" in answer
        answered = drill.run(answer.replace("{id}", str(task.id))).stdout
        user = pwd.getpwuid(os.getuid()).pw_name
        assert answered == f"task {task.id}: decision 'yes' recorded by cli:{user}; now pending\n"
        stored = client.get_task(task.id)
        assert stored.decided_by == f"cli:{user}" and stored.status == TaskStatus.PENDING
        drill.run(answer.replace("{id}", str(task.id)))  # a repeat is safe
        assert client.get_task(task.id).decided_at == stored.decided_at
        other = drill.run(answer.replace("{id}", str(task.id)).replace(" yes", " no"), check=False)
        assert other.returncode == 1 and "does not wait for a decision" in other.stderr  # 409: nothing changed
        assert client.get_task(task.id).decision == "yes"


def test_drill_retry_a_failed_task_then_cancel_it_and_bring_it_back(runbook: Runbook, drill: Drill,
                                                                     api: ApiProcess) -> None:
    """Two procedures on one API: retry a failed task, then the cancel drill on it (pending now)."""
    user = pwd.getpwuid(os.getuid()).pw_name
    with ApiClient(api.url, token="") as client:
        task = client.create_task("flaky", "run", command="false")
        claim = client.claim("drill")
        client.finish(task.id, claim.claim_token, TaskStatus.FAILED, exit_code=2, output="it broke\n")
        listing, detail, retry = (c.replace("{id}", str(task.id)) for c in runbook.drill("retry-failed").commands())
        assert drill.run(listing).stdout.startswith(f"#{task.id} ")
        assert "exit_code: 2" in drill.run(detail).stdout
        assert f"task {task.id}: now pending" in drill.run(retry).stdout
        assert client.get_task(task.id).status == TaskStatus.PENDING
        assert drill.run(retry, check=False).returncode == 1  # only a failed (or cancelled) task is retried

        cancel, detail, retry = (c.replace("{id}", str(task.id)) for c in runbook.drill("cancel-task").commands())
        assert drill.run(cancel).stdout == f"task {task.id} cancelled by cli:{user}: started by mistake\n"
        shown = drill.run(detail).stdout
        assert "status: cancelled" in shown and f"cancelled_by: cli:{user}" in shown
        assert "cancel_reason: started by mistake" in shown
        assert drill.run(cancel).returncode == 0  # a repeat is safe
        assert f"task {task.id}: now pending" in drill.run(retry).stdout
        back = client.get_task(task.id)
        assert (back.status, back.cancelled_by) == (TaskStatus.PENDING, None)


def test_drill_restart_one_component_under_the_supervisor(runbook: Runbook, tmp_path: Path) -> None:
    pipeline = PipelineProcess(tmp_path / "home", "--components", "api,agent_runner").start()
    drill = Drill(pipeline.home, pipeline.port)
    try:
        pipeline.wait_started("api", "agent_runner")
        runner, api_pid = pipeline.pid("agent_runner"), pipeline.pid("api")
        (done,) = drill.run_block(runbook.drill("restart-component"))
        assert f"the supervisor (pid {pipeline.proc.pid})" in done.stdout  # type: ignore[union-attr]
        wait_until(lambda: pipeline.pid("agent_runner") not in (None, runner) and alive(pipeline.pid("agent_runner")),
                   30, "a new runner")
        assert pipeline.pid("api") == api_pid  # only the component asked for
        assert not (pipeline.home / "logs" / "restart_requested.json").exists()  # acted on, then removed
        assert "restart requested for agent_runner: picked up new settings" in (
            pipeline.home / "logs" / "supervisor.log").read_text()
    finally:
        drill.close()
        pipeline.stop()


def test_drill_check_pipeline_json_is_parsed_by_jq(runbook: Runbook, drill: Drill, api: ApiProcess) -> None:
    with ApiClient(api.url, token="") as client:
        for i in range(3):
            client.create_task(f"t{i}", "run", command="true")
        claim = client.claim("drill")
        client.finish(claim.id, claim.claim_token, "failed", exit_code=1)
    (command,) = runbook.drill("check-pipeline-json").commands()
    counts = json.loads(drill.run(command).stdout)
    assert counts == {"pending": 2, "running": 0, "completed": 0, "failed": 1, "needs_decision": 0, "cancelled": 0}


def test_drill_report_fatal_before_and_after_a_fatal_issue(runbook: Runbook, drill: Drill, api: ApiProcess) -> None:
    report, as_json, clear = runbook.drill("report-fatal").commands()
    healthy = drill.run(report)
    assert "No fatal issues." in healthy.stdout
    settings = Settings(coherence_home=drill.home)
    with ApiClient(api.url, token="") as client:
        fatal.record(settings, "agent_runner", "crashed 5 times in 300 s", "Traceback: boom", "5 restarts", client)
    broken = drill.run(report, check=False)
    assert broken.returncode == 1 and "agent_runner" in broken.stdout and "crashed 5 times" in broken.stdout
    issues = json.loads(drill.run(as_json, check=False).stdout)
    assert issues["count"] >= 1 and issues["fatal_issues"][0]["component"] == "agent_runner"
    drill.run(clear)
    assert "No fatal issues." in drill.run(report).stdout
    with ApiClient(api.url, token="") as client:
        assert client.fatal_issues().items == []  # the store's copy is cleared too


def test_drill_recovery_after_the_runner_is_killed(runbook: Runbook, tmp_path: Path) -> None:
    drill = Drill(tmp_path / "home", free_port(),
                  env={"MONITOR_RUNNER_SEEN_SECONDS": "1", "AGENT_KILL_GRACE_SECONDS": "1"})
    # the API judges who is seen (the health rules), so the short window is its setting
    api = ApiProcess(drill.home, port=drill.port,
                     env={"COHERENCE_LEASE_SECONDS": "2", "MONITOR_RUNNER_SEEN_SECONDS": "1"}).start()
    runner = RunnerProcess(drill.home, api.url, env={"COHERENCE_LEASE_SECONDS": "2"}).start()
    try:
        marker = tmp_path / "runs"
        code = (f"import time; open({str(marker)!r},'a').write('x'); "
                f"time.sleep(0 if len(open({str(marker)!r}).read())>1 else 300)")
        with ApiClient(api.url, token="") as client:
            task = client.create_task("survive a dead runner", "run", command=f'{sys.executable} -c "{code}"')
            wait_until(lambda: marker.exists(), 30, "task started")
            runner.signal(signal.SIGKILL)
            runner.wait()
            wait_until(lambda: client.get_task(task.id).status == "pending", 30, "lease expired")
            (check,) = runbook.drill("runner-died-check").commands()
            wait_until(lambda: "no_runner: 1 task(s) pending or running but no runner alive (runners: 0 alive, 0 "
                       "stopped, 1 dead)" in drill.run(check, check=False).stdout, 30, "doctor names it")
            checked = drill.run(check, check=False)
            assert checked.returncode == 1 and "coherence runner" in checked.stdout
            drill.run_block(runbook.drill("runner-restart"))
            wait_until(lambda: client.get_task(task.id).status == "completed", 60, "documented restart finishes it")
            assert client.get_task(task.id).attempts == 1  # the expired lease; completing uses none
    finally:
        runner.stop()
        drill.close()
        api.stop()


def test_drill_indexing_against_a_mirror(runbook: Runbook, tmp_path: Path) -> None:
    """The Indexing procedure with npm and pip configured for a local mirror (the fixture registry)."""
    seeds = [
        line.split("#", 1)[0].strip()
        for eco in ("npm", "pypi")
        for line in (ROOT / "src" / "coherence_network" / "data" / f"seeds_{eco}.txt").read_text().splitlines()
    ]
    mirror = FixtureRegistry(300, faults=False, roots=filter(None, seeds)).start()
    drill = Drill(tmp_path / "home", free_port(),
                  env={"NPM_CONFIG_REGISTRY": mirror.npm_url, "PIP_INDEX_URL": mirror.pypi_index_url})
    api = ApiProcess(drill.home, port=drill.port).start()
    try:
        first, to_target, pypi, stats = runbook.drill("indexing").commands()
        out = drill.run(first).stdout
        assert f"npm from {mirror.npm_url}" in out and "indexed 50," in out  # the mirror, found in npm's config
        assert sum(mirror.requests.values()) == 50  # --limit is exact
        # resumed from the stored queue: the 50 already indexed are not fetched again
        assert json.loads(drill.run(to_target).stdout) == {"indexed": 150, "failed": 0, "projects": 200}
        assert max(mirror.requests.values()) == 1
        assert "PyPI from " in drill.run(pypi).stdout
        assert json.loads(drill.run(stats).stdout) == {"npm": 200, "pypi": 20}
    finally:
        drill.close()
        api.stop()
        mirror.stop()


def test_drill_a_repeated_create_with_the_documented_key_makes_one_task(runbook: Runbook, drill: Drill,
                                                                        api: ApiProcess) -> None:
    first, again = (result.stdout.strip() for result in drill.run_block(runbook.drill("create-idempotent")))
    assert first == again and first.isdigit()
    assert httpx.get(f"{api.url}/api/agent/tasks/count").json()["total"] == 1


def test_drill_full_disk_shows_the_blocked_runner(runbook: Runbook, drill: Drill, api: ApiProcess) -> None:
    """What a runner on a full disk reports (its heartbeat info, as Runner.status sends it) is what the drill's
    commands show: the disk, the runner_blocked flag in `coherence status` (exit 1: attention), the runner's info."""
    error = "slot 0: task 7 not started: cannot write the task log: [Errno 28] No space left on device"
    with ApiClient(api.url, token="") as client:
        client.runner_heartbeat("host:1", "host", 1, "0", {"workers": 2, "busy": 0, "slots_alive": 2,
                                                          "slots_blocked": 1, "blocked": [error], "last_error": error})
    disk, status, runners = (drill.run(command, check=False) for command in runbook.drill("full-disk").commands())
    assert disk.returncode == 0 and "Filesystem" in disk.stdout
    assert status.returncode == 1 and "cannot run tasks on their host" in status.stdout
    assert "No space left on device" in status.stdout
    info = json.loads(runners.stdout)["items"][0]["info"]
    assert (info["slots_alive"], info["slots_blocked"]) == (2, 1)


def test_drill_secrets_in_proc_shows_only_stars(runbook: Runbook, tmp_path: Path) -> None:
    """The API and a runner started with the token (and the API with a database URL holding a password): the
    drill's command finds each secret variable in their /proc/<pid>/environ, and only as stars."""
    token = "drill-token-0123456789abcdef"
    drill = Drill(tmp_path / "home", free_port(), env={"COHERENCE_API_TOKEN": token})
    api = ApiProcess(drill.home, port=drill.port, env={"COHERENCE_API_TOKEN": token}).start()
    runner = RunnerProcess(drill.home, api.url, env={"COHERENCE_API_TOKEN": token}).start()
    try:
        run = drill.home / "run"
        wait_until(lambda: (run / "api.pid").exists() and list(run.glob("runners/*.lock")), 30, "the API's PID file "
                   "and the runner's lock")
        (command,) = runbook.drill("secrets-in-proc").commands()
        lines = drill.run(command).stdout.splitlines()
        masked = "COHERENCE_API_TOKEN=" + "*" * len(token)
        assert len(lines) >= 2 and all(line.endswith(masked) for line in lines), lines
        assert token not in "\n".join(lines)
    finally:
        runner.stop()
        api.stop()
        drill.close()


def test_drill_pause_and_resume_a_type_across_an_api_restart(runbook: Runbook, drill: Drill, api: ApiProcess) -> None:
    pause, status, resume = runbook.drill("pause-resume").commands()
    with ApiClient(api.url, token="") as client:
        held = client.create_task("held", "impl")
        assert drill.run(pause).stdout.startswith("paused impl since")
        api.stop()
        api.start()  # the pause is stored: the restarted API keeps it
        assert client.claim("drill") is None
        client.runner_heartbeat("drill", "host", os.getpid(), "1.0", {"workers": 1})  # a runner is there
        shown = drill.run(status)  # a deliberate pause is a warning: exit 0
        assert "paused (impl since" in shown.stdout and "coherence resume --type impl" in shown.stdout
        assert drill.run(resume).stdout.startswith("resumed impl")
        claimed = client.claim("drill")
        assert claimed is not None and claimed.id == held.id


def test_drill_bulk_retry_previews_then_acts_with_yes(runbook: Runbook, drill: Drill, api: ApiProcess) -> None:
    preview, act = runbook.drill("bulk-retry").commands()
    with ApiClient(api.url, token="") as client:
        made = client.create_tasks([{"direction": f"failed {i}", "task_type": "run", "command": "false"}
                                    for i in range(3)])
        for task in client.claim_many("drill", 3):
            client.finish(task.id, task.claim_token, TaskStatus.FAILED, exit_code=1, error_category="config_error")
        shown = drill.run(preview)  # no terminal, no --yes: the preview only
        assert shown.stdout.startswith("retry would take 3 tasks") and "Nothing was done" in shown.stdout
        assert {client.get_task(t.id).status for t in made} == {TaskStatus.FAILED}
        assert drill.run(act).stdout.strip().endswith("retried 3 of the 3 tasks previewed")
        assert {client.get_task(t.id).status for t in made} == {TaskStatus.PENDING}
def test_drill_read_the_audit_trail(runbook: Runbook, drill: Drill) -> None:
    api = ServedApi(drill.home, port=drill.port).start()  # the drill is the CLI's: the API may be served in-process
    try:
        with ApiClient(api.url, token="", actor="cli:ops") as client:
            task = client.create_task("flaky", "run", command="false")
            with ApiClient(api.url, token="", actor="component:agent_runner") as runner:
                claim = runner.claim("drill")
                runner.finish(task.id, claim.claim_token, TaskStatus.FAILED, exit_code=1)
            client.retry_task(task.id)
        recent, one_task, as_json = (c.replace("{id}", str(task.id)) for c in runbook.drill("audit-trail").commands())
        table = drill.run(recent).stdout.splitlines()
        assert table[0].startswith("time (UTC)") and len(table) == 3
        assert "cli:ops" in table[1] and "retry" in table[1] and "failed->pending" in table[1]
        assert "create" in table[2] and f"#{task.id}" in table[2] and "->pending" in table[2]
        assert len(drill.run(one_task).stdout.splitlines()) == 3
        [retried] = json.loads(drill.run(as_json).stdout)["items"]
        assert (retried["actor"], retried["channel"], retried["task_id"]) == ("cli:ops", "cli", task.id)
        assert (retried["status_before"], retried["status_after"]) == ("failed", "pending")
    finally:
        api.stop()
def test_drill_limits_set_see_and_clear(runbook: Runbook, drill: Drill, api: ApiProcess) -> None:
    limit, show, clear = runbook.drill("limits").commands()
    with ApiClient(api.url, token="") as client:
        first, second = client.create_task("first", "impl"), client.create_task("second", "impl")
        assert drill.run(limit).stdout.startswith("impl: changed; now max_running=1")
        running = client.claim("drill")
        assert running is not None and running.id == first.id
        assert client.claim("drill") is None  # at its limit
        impl = next(line for line in drill.run(show).stdout.splitlines() if line.startswith("impl "))
        assert impl.split()[1:3] == ["1", "1"]  # one running, a limit of one
        assert "max_running=no limit (default)" in drill.run(clear).stdout
        claimed = client.claim("drill")
        assert claimed is not None and claimed.id == second.id
        client.finish(running.id, running.claim_token, "completed")
        client.finish(claimed.id, claimed.claim_token, "completed")


def test_drill_the_circuit_breaker_opens_is_seen_and_resumed(runbook: Runbook, drill: Drill) -> None:
    status, out_of_attempts, resume = runbook.drill("breaker").commands()
    api = ApiProcess(drill.home, port=drill.port, env={"COHERENCE_BREAKER_FAILURES": "2"}).start()
    try:
        with ApiClient(api.url, token="") as client:
            failed = []
            for n in range(2):  # one attempt each: out of attempts at once, and two failures in a row
                task = client.create_task(f"provider down {n}", "run", command="false", max_attempts=1)
                claimed = client.claim("drill")
                assert claimed is not None and claimed.id == task.id
                failed.append(client.finish(task.id, claimed.claim_token, TaskStatus.FAILED, exit_code=1,
                                            error_category="nonzero_exit", error_summary="exit 1: 503"))
            held = client.create_task("waits for the resume", "run", command="true")
            assert client.claim("drill") is None
            shown = drill.run(status, check=False)
            assert shown.returncode == 1 and "breaker_open: the circuit breaker paused run" in shown.stdout
            assert "coherence resume --type run" in shown.stdout
            listed = drill.run(out_of_attempts).stdout.splitlines()
            assert [line.split()[0] for line in listed[:2]] == [f"#{failed[1].id}", f"#{failed[0].id}"]
            assert "nonzero_exit" in listed[0]
            assert drill.run(resume).stdout.startswith("resumed run")
            claimed = client.claim("drill")
            assert claimed is not None and claimed.id == held.id
    finally:
        api.stop()
