"""The supervisor with real processes: restarts, restart requests, fatal issues, clean stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from coherence_network.logfiles import write_json_atomic
from tests.runbook.runbook_doc import ROOT
from tests.support.net import wait_until
from tests.support.pipeline import PipelineProcess, alive, processes_with_home


def _create(pipeline: PipelineProcess, command: str) -> int:
    body = {"direction": f"run: {command}", "task_type": "run", "command": command}
    return int(httpx.post(f"{pipeline.url}/api/agent/tasks", json=body, timeout=10).json()["id"])


def _status(pipeline: PipelineProcess, task_id: int) -> str:
    return str(httpx.get(f"{pipeline.url}/api/agent/tasks/{task_id}", timeout=10).json()["status"])


def _wait_completed(pipeline: PipelineProcess, task_id: int) -> None:
    wait_until(lambda: pipeline.api_up() and _status(pipeline, task_id) == "completed", 60, f"task {task_id}")


PY_OK = f"{sys.executable} -c pass"


def _kill_and_wait_for_a_new_one(pipeline: PipelineProcess, component: str, sig: int) -> None:
    """Signal the component's process group, then wait until the supervisor has a new one running (and the API
    answers again)."""
    first = pipeline.pid(component)
    assert first is not None
    os.killpg(first, sig)
    wait_until(lambda: pipeline.pid(component) not in (None, first) and alive(pipeline.pid(component))
               and pipeline.api_up(), 60, f"a new {component}")


def test_runner_killed_with_sigkill_is_restarted(tmp_path: Path, pipelines: list[PipelineProcess]) -> None:
    pipeline = PipelineProcess.started_in(pipelines, tmp_path / "home", "--components", "api,agent_runner")
    pipeline.wait_started("api", "agent_runner")
    _kill_and_wait_for_a_new_one(pipeline, "agent_runner", signal.SIGKILL)
    _wait_completed(pipeline, _create(pipeline, PY_OK))
    log = (pipeline.home / "logs" / "supervisor.log").read_text()
    assert "agent_runner exited with -9" in log and "restarting agent_runner" in log


def test_restart_request_restarts_the_api_and_tasks_survive(tmp_path: Path,
                                                            pipelines: list[PipelineProcess]) -> None:
    pipeline = PipelineProcess.started_in(pipelines, tmp_path / "home", "--components", "api,agent_runner")
    pipeline.wait_started("api", "agent_runner")
    before = _create(pipeline, PY_OK)
    _wait_completed(pipeline, before)
    api_pid = pipeline.pid("api")
    request = pipeline.home / "logs" / "restart_requested.json"
    write_json_atomic(request, {"reason": "test", "component": "api", "at": "2026-01-01T00:00:00+00:00"})
    wait_until(lambda: not request.exists(), 60, "the request handled")
    assert pipeline.pid("api") != api_pid and not alive(api_pid)
    assert alive(pipeline.pid("api")) and pipeline.api_up()
    assert _status(pipeline, before) == "completed"  # progress kept across the restart
    _wait_completed(pipeline, _create(pipeline, PY_OK))  # and the runner carries on with the new API

    version_file = pipeline.home / "logs" / "pipeline_version.json"
    started = json.loads(version_file.read_text())["started_at"]
    runner_pid, api_pid = pipeline.pid("agent_runner"), pipeline.pid("api")
    write_json_atomic(request, {"reason": "stale_version", "component": "all", "at": "2026-01-01T00:00:00+00:00"})
    wait_until(lambda: not request.exists(), 60, "the request handled")
    assert pipeline.pid("agent_runner") != runner_pid and pipeline.pid("api") != api_pid
    assert json.loads(version_file.read_text())["started_at"] != started  # the restarted code is recorded


def _command_line(pid: int) -> bytes:
    """A process's command line; empty once it has gone (a short-lived child can exit between listing and reading)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("how", ["sigterm", "coherence stop"])
def test_stopping_leaves_no_process_behind(tmp_path: Path, pipelines: list[PipelineProcess], how: str) -> None:
    home = tmp_path / "home"
    backlog = tmp_path / "backlog.md"
    backlog.write_text("1. run: sleep 300\n")
    pipeline = PipelineProcess.started_in(pipelines, home, "--backlog", str(backlog))
    pipeline.wait_started("api", "agent_runner", "project_manager", "monitor", "supervisor")
    running = f"{pipeline.url}/api/agent/tasks?status=running"
    wait_until(lambda: httpx.get(running, timeout=10).json()["total"] == 1, 60, "the task running")
    wait_until(lambda: any(_command_line(p).startswith(b"sleep") for p in processes_with_home(home)), 30,
               "sleep started")
    assert len(processes_with_home(home)) >= 6  # supervisor, api, runner, manager, monitor, the task
    if how == "sigterm":
        assert pipeline.proc is not None
        pipeline.proc.send_signal(signal.SIGTERM)
    else:
        stopped = pipeline.cli("stop")
        assert stopped.returncode == 0 and "supervisor" in stopped.stdout
    assert pipeline.wait(90) == 0
    assert processes_with_home(home) == []
    assert list((home / "run").glob("*.pid")) == []


def _started_args(log: str, component: str) -> list[str]:
    return [line.split(": ", 2)[2] for line in log.splitlines() if f"started {component} (pid" in line]


def test_reset_applies_to_the_first_start_only(tmp_path: Path, pipelines: list[PipelineProcess]) -> None:
    """`run_autonomous.sh --reset`: a restarted project manager keeps its progress (no finished item made again)."""
    backlog = tmp_path / "backlog.md"
    backlog.write_text(f"1. run: {PY_OK}\n")
    home = tmp_path / "home"
    state = home / "logs" / "project_manager_state.json"
    pipeline = AutonomousProcess(home, "--reset", "--backlog", str(backlog), "--components",
                                 "api,agent_runner,project_manager").start()
    pipelines.append(pipeline)
    pipeline.wait_started("api", "agent_runner", "project_manager")
    wait_until(lambda: state.exists() and '"done"' in state.read_text(), 60, "the item done")
    first = pipeline.pid("project_manager")
    assert first is not None
    os.kill(first, signal.SIGTERM)
    wait_until(lambda: pipeline.pid("project_manager") not in (None, first), 60, "a new project manager")
    passed = state.stat().st_mtime_ns
    wait_until(lambda: state.stat().st_mtime_ns != passed, 60, "a pass of the restarted project manager")
    assert httpx.get(f"{pipeline.url}/api/agent/tasks/count", timeout=10).json()["total"] == 1
    assert '"done"' in state.read_text()
    starts = _started_args((home / "logs" / "supervisor.log").read_text(), "project_manager")
    assert len(starts) == 2 and "--reset" in starts[0] and "--reset" not in starts[1]


class AutonomousProcess(PipelineProcess):
    """`scripts/run_autonomous.sh` (auto-commit, auto-recover) instead of a bare `coherence supervise`."""

    def start(self) -> AutonomousProcess:
        self.proc = subprocess.Popen([str(ROOT / "scripts" / "run_autonomous.sh"), *self.args], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        return self


def test_a_git_failure_in_auto_commit_stops_nothing(tmp_path: Path, pipelines: list[PipelineProcess]) -> None:
    """No git on the PATH: auto-commit fails, says so, and every component keeps running."""
    no_git = tmp_path / "bin"
    no_git.mkdir()
    pipeline = PipelineProcess.started_in(pipelines, tmp_path / "home", "--components", "api,agent_runner",
                      PATH=str(no_git), PIPELINE_AUTO_COMMIT="1",
                      COHERENCE_COMMAND_TASK_TYPES="run,impl")  # an impl task is committed
    pipeline.wait_started("api", "agent_runner", "supervisor")
    progress = pipeline.home / "logs" / "commit_progress.log"
    wait_until(lambda: progress.exists() and "auto-commit on" in progress.read_text(), 30, "auto-commit watching")
    pids = {name: pipeline.pid(name) for name in ("supervisor", "api", "agent_runner")}
    body = {"direction": "write the code", "task_type": "impl", "command": PY_OK}
    task_id = int(httpx.post(f"{pipeline.url}/api/agent/tasks", json=body, timeout=10).json()["id"])
    _wait_completed(pipeline, task_id)
    recorded = pipeline.home / "logs" / "auto_commit.json"  # written just after the log line
    wait_until(lambda: recorded.exists() and "git cannot run" in progress.read_text(), 30, "the git failure recorded")
    status = json.loads(recorded.read_text())
    assert status["failures"] >= 1 and "git cannot run" in status["last_error"]
    assert "auto-commit failed" in (pipeline.home / "logs" / "supervisor.log").read_text()
    _wait_completed(pipeline, _create(pipeline, PY_OK))  # the pipeline carries on
    assert {name: pipeline.pid(name) for name in pids} == pids and all(alive(pid) for pid in pids.values())


def test_a_sigkilled_supervisor_takes_its_components_with_it_and_a_new_one_starts_clean(
    tmp_path: Path, pipelines: list[PipelineProcess]
) -> None:
    """A supervisor that dies (SIGKILL, the OOM killer) must not leave components holding their locks: a new
    supervisor would find them "already running" and crash-loop into a fatal issue."""
    home = tmp_path / "home"
    first = PipelineProcess.started_in(pipelines, home, "--components", "api,agent_runner")
    first.wait_started("api", "agent_runner")
    children = [first.pid("api"), first.pid("agent_runner")]
    assert first.proc is not None
    first.proc.kill()  # the supervisor alone, not its children's groups
    first.proc.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in children), 30, "the components to stop with their supervisor")
    second = PipelineProcess.started_in(pipelines, home, "--components", "api,agent_runner")
    second.wait_started("api", "agent_runner")
    _wait_completed(second, _create(second, PY_OK))
    log = (home / "logs" / "supervisor.log").read_text(encoding="utf-8")
    assert "already runs" not in log


def test_the_supervisor_says_where_to_look_and_when_the_backlog_is_done(
    tmp_path: Path, pipelines: list[PipelineProcess]
) -> None:
    backlog = tmp_path / "backlog.md"
    backlog.write_text(f"1. run: {PY_OK}\n2. run: {PY_OK} # the second\n", encoding="utf-8")
    home = tmp_path / "home"
    pipeline = PipelineProcess.started_in(pipelines, home, "--components", "api,agent_runner,project_manager",
                      "--backlog", str(backlog), "--pm-arg=--interval", "--pm-arg=0.2")
    log_file = home / "logs" / "supervisor.log"
    wait_until(lambda: log_file.exists() and "backlog done: 2 items (done 2)" in log_file.read_text(encoding="utf-8"),
               60, "the done line")
    text = log_file.read_text(encoding="utf-8")
    assert f"pipeline running: API {pipeline.url} (reference {pipeline.url}/docs); watch it: coherence status --watch" \
        in text
    assert text.count("backlog done") == 1


def test_a_foreign_server_on_the_api_port_stops_the_supervisor_before_it_starts_anything(tmp_path: Path) -> None:
    """Not a crash-looping API and a fatal issue full of another server's HTML: one line, nothing started."""
    home = tmp_path / "home"
    foreign = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert foreign.stdout is not None
        port = int(foreign.stdout.readline().split(" port ")[1].split()[0])
        pipeline = PipelineProcess(home, "--components", "api,agent_runner")
        env = {**pipeline.env, "COHERENCE_API_PORT": str(port), "AGENT_API_BASE": f"http://127.0.0.1:{port}"}
        done = subprocess.run([sys.executable, "-m", "coherence_network.cli", "supervise", "--components",
                               "api,agent_runner"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        log = (home / "logs" / "supervisor.log").read_text(encoding="utf-8")
        assert f"port {port} is held by pid {foreign.pid}" in log and "nothing started" in log
        assert "started agent_runner" not in log and not (home / "logs" / "fatal_issues.json").exists()
        assert processes_with_home(home) == []
    finally:
        foreign.kill()
        foreign.wait(10)
