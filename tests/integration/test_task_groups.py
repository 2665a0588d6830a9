"""Nothing outlives its owner: a task's processes (grandchildren included) die with their runner, and no task runs
twice at once on one host. Real runner processes, the API over HTTP, real task process trees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import Task, TaskStatus
from coherence_network.settings import Settings
from coherence_network.task_run import ClaimLost
from coherence_network.taskgroups import NewerRunRecorded, TaskGroup, kill_orphaned_task_groups, stop_previous_runs
from tests.integration.test_runner import process_gone, program, py
from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.runner import RunnerProcess

PY = sys.executable

# One run of a task: notes "start", starts a grandchild (a sleep of its own), and lists both pids; at its start
# it notes "overlap" when a process of an earlier run is still alive. On SIGTERM it notes "term", then ends
# ("die") or carries on regardless ("linger", so only SIGKILL stops it). A run that finds an earlier one finishes.
RUN = """
import os, signal, subprocess, sys, time
runs, mode = sys.argv[1], sys.argv[2]

def note(word):
    with open(runs, "a") as out:
        out.write(f"{word} {os.getpid()} {time.time():.6f}\\n")

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

def on_term(*_):
    note("term")
    if mode == "die":
        sys.exit(143)

signal.signal(signal.SIGTERM, on_term)
earlier = [int(pid) for line in open(runs) for pid in line.split()[1:] if line.startswith("pids ")] \\
    if os.path.exists(runs) else []
note("start")
if any(alive(pid) for pid in earlier):
    note("overlap")
if earlier:
    note("end")
    print("second run done")
    sys.exit(0)
grandchild = subprocess.Popen(["sleep", "300"])
with open(runs, "a") as out:
    out.write(f"pids {os.getpid()} {grandchild.pid}\\n")
time.sleep(300)
"""


def runs_of(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def first_run_pids(path: Path) -> list[int]:
    return [int(pid) for words in runs_of(path) if words[0] == "pids" for pid in words[1:]]


def records(home: Path) -> list[dict[str, object]]:
    """The task-group records on disk; one removed between the listing and its read (what a test may be waiting
    for) is gone, not an error."""
    found = []
    for path in sorted((home / "run" / "task_groups").glob("*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except FileNotFoundError:
            continue
    return found


def runner(api: ServedApi, **env: str) -> RunnerProcess:
    return RunnerProcess(api.home, api.url, env={"AGENT_KILL_GRACE_SECONDS": "1", **env})


@pytest.fixture
def short_lease_api(tmp_path: Path, migrated_store_url: str) -> Iterator[ServedApi]:
    env = {"DATABASE_URL": migrated_store_url, "COHERENCE_LEASE_SECONDS": "2"}
    api = ServedApi(tmp_path / "home", env=env).start()
    yield api
    api.stop()


@pytest.fixture
def started() -> Iterator[list[RunnerProcess]]:
    """Runner processes a test starts; whatever is left is killed with its process group."""
    procs: list[RunnerProcess] = []
    yield procs
    for proc in procs:
        proc.stop()  # SIGKILL works on a stopped process too


def start(procs: list[RunnerProcess], proc: RunnerProcess) -> RunnerProcess:
    procs.append(proc.start())
    return proc


def test_a_killed_runners_task_dies_with_it_and_never_runs_twice_at_once(
    short_lease_api: ServedApi, started: list[RunnerProcess], tmp_path: Path
) -> None:
    api, runs = short_lease_api, tmp_path / "runs"
    script = program(tmp_path, "task.py", RUN)
    with ApiClient(api.url, token="") as client:
        task = client.create_task("outlive", "run", command=f"{PY} {script} {runs} die")
        first = start(started, runner(api))
        wait_until(lambda: len(first_run_pids(runs)) == 2, 30, "task and grandchild running")
        task_pid, grandchild = first_run_pids(runs)
        first.signal(signal.SIGKILL)  # the runner's whole process group, as an OOM kill or `kill -9 -pgid` would
        first.wait()
        wait_until(lambda: process_gone(task_pid) and process_gone(grandchild), 3, "the task's processes gone")
        wait_until(lambda: records(api.home) == [], 3, "the task group's record removed")
        start(started, runner(api))
        wait_until(lambda: client.get_task(task.id).status == TaskStatus.COMPLETED, 60, "second run completed")
        assert client.get_task(task.id).output == "second run done\n"
    words = [line[0] for line in runs_of(runs) if line[0] != "pids"]
    assert words == ["start", "term", "start", "end"], words


def test_a_new_runner_stops_a_previous_run_of_its_task_first(
    tmp_path: Path, started: list[RunnerProcess]
) -> None:
    """A frozen runner (SIGSTOP: alive, its lease lost) still has its task running on this host; the runner that
    claims the task next stops that run before it starts its own, even though the task ignores SIGTERM."""
    api = ServedApi(tmp_path / "home", env={"COHERENCE_LEASE_SECONDS": "2"}).start()
    try:
        runs = tmp_path / "runs"
        script = program(tmp_path, "task.py", RUN)
        with ApiClient(api.url, token="") as client:
            task = client.create_task("zombie", "run", command=f"{PY} {script} {runs} linger")
            frozen = start(started, runner(api, AGENT_KILL_GRACE_SECONDS="60"))
            wait_until(lambda: len(first_run_pids(runs)) == 2, 30, "task and grandchild running")
            frozen.signal(signal.SIGSTOP)
            start(started, runner(api))
            wait_until(lambda: client.get_task(task.id).status == TaskStatus.COMPLETED, 60, "second run done")
            assert client.get_task(task.id).claim_token == 2
            assert all(process_gone(pid) for pid in first_run_pids(runs))
            frozen.signal(signal.SIGCONT)  # wakes to find its run ended and its claim gone: drops its result
            runner_log = api.home / "logs" / "agent_runner.log"
            wait_until(lambda: "the claim is no longer ours" in runner_log.read_text()
                       or "claim lost" in runner_log.read_text(), 30, "the frozen runner's result dropped")
            assert client.get_task(task.id).output == "second run done\n"
        words = [line[0] for line in runs_of(runs) if line[0] != "pids"]
        assert words == ["start", "term", "start", "end"], words
        assert "stopped the previous run" in (api.home / "logs" / "agent_runner.log").read_text()
    finally:
        api.stop()


def test_kill_orphaned_task_groups_kills_groups_whose_runner_is_gone(
    served_api: ServedApi, started: list[RunnerProcess], tmp_path: Path
) -> None:
    """The guard and the runner both SIGKILLed at once leave the task and its grandchild behind, still recorded:
    ``kill_orphaned_task_groups`` (called by a starting runner, ``coherence stop`` and the supervisor) ends them."""
    api, runs = served_api, tmp_path / "runs"
    script = program(tmp_path, "task.py", RUN)
    settings = Settings(coherence_home=api.home, agent_kill_grace_seconds=1)
    with ApiClient(api.url, token="") as client:
        orphan = client.create_task("orphan", "run", command=f"{PY} {script} {runs} linger")
        first = start(started, runner(api))
        wait_until(lambda: len(first_run_pids(runs)) == 2, 30, "task and grandchild running")
        [record] = records(api.home)
        guard = int(record["pgid"])  # type: ignore[call-overload]
        os.kill(guard, signal.SIGSTOP)  # so it cannot act on its runner's death
        first.signal(signal.SIGKILL)
        first.wait()
        os.kill(guard, signal.SIGKILL)
        wait_until(lambda: process_gone(guard), 10, "guard gone")
        pids = first_run_pids(runs)
        assert not any(process_gone(pid) for pid in pids)  # the orphans the record is for

        done = kill_orphaned_task_groups(settings)
        assert len(done) == 1 and f"task {orphan.id}" in done[0] and "its runner is gone" in done[0], done
        assert all(process_gone(pid) for pid in pids)
        assert records(api.home) == []

        other_runs = tmp_path / "other_runs"
        busy = client.create_task("busy", "run", command=f"{PY} {script} {other_runs} die")
        start(started, runner(api))
        wait_until(lambda: len(first_run_pids(other_runs)) == 2, 30, "a task of a live runner running")
        assert kill_orphaned_task_groups(settings) == []  # a live runner's group is left alone
        assert [r["task_id"] for r in records(api.home)] == [busy.id]

        done = kill_orphaned_task_groups(settings, all_groups=True)
        assert len(done) == 1 and f"task {busy.id}" in done[0], done
        assert all(process_gone(pid) for pid in first_run_pids(other_runs))
        assert records(api.home) == []


def test_a_record_of_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    """A record whose process group leader is not the guard it names (the pid was reused) is dropped unsignalled."""
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        folder = tmp_path / "home" / "run" / "task_groups"
        folder.mkdir(parents=True)
        (folder / f"{stranger.pid}.json").write_text(json.dumps({
            "pgid": stranger.pid, "guard_start": 1, "task_id": 1, "claim_token": 1, "runner_pid": 2 ** 22 + 1,
            "runner_start": 1,
        }))
        assert kill_orphaned_task_groups(Settings(coherence_home=tmp_path / "home"), all_groups=True) == []
        assert stranger.poll() is None and not any(folder.iterdir())
    finally:
        stranger.kill()
        stranger.wait()


def test_exit_codes_and_output_pass_through_unchanged(served_api: ServedApi, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    code = {
        "three": "import sys; print('oops'); sys.exit(3)",
        "killed": "import os, signal; print('bye', flush=True); os.kill(os.getpid(), signal.SIGKILL)",
        "terminated": "import os, signal; print('bye', flush=True); os.kill(os.getpid(), signal.SIGTERM)",
        "streamed": f"import os, time\nprint('first', flush=True)\nwhile not os.path.exists({str(gate)!r}): "
                    "time.sleep(0.05)\nprint('second')",
    }
    with ApiClient(served_api.url, token="") as client:
        tasks = {name: client.create_task(name, "run", command=py(text), max_attempts=1)  # one run each
                 for name, text in code.items()}
        missing = client.create_task("missing", "run", command="no-such-command-anywhere --flag")
        proc = RunnerProcess(served_api.home, served_api.url, "--workers", "5").start()
        try:
            streamed = served_api.home / "logs" / f"task_{tasks['streamed'].id}.log"
            wait_until(lambda: streamed.exists() and "first\n" in streamed.read_text(), 30, "first line in the log")
            assert client.get_task(tasks["streamed"].id).status == TaskStatus.RUNNING
            gate.write_text("go")
            wait_until(lambda: all(client.get_task(t.id).status not in (TaskStatus.PENDING, TaskStatus.RUNNING)
                                   for t in [*tasks.values(), missing]), 60, "all tasks done")
        finally:
            proc.stop()
        got = {name: client.get_task(t.id) for name, t in tasks.items()}
        assert {name: (t.status, t.exit_code, t.output) for name, t in got.items()} == {
            "three": (TaskStatus.FAILED, 3, "oops\n"),
            "killed": (TaskStatus.FAILED, -9, "bye\n"),
            "terminated": (TaskStatus.FAILED, -15, "bye\n"),
            "streamed": (TaskStatus.COMPLETED, 0, "first\nsecond\n"),
        }
        missing = client.get_task(missing.id)
        assert (missing.status, missing.exit_code) == (TaskStatus.FAILED, None)
        reason = "[Errno 2] No such file or directory: 'no-such-command-anywhere'"
        assert missing.output == f"cannot start the task: {reason}\n"
    assert "exit_code=-9 duration=" in (served_api.home / "logs" / f"task_{got['killed'].id}.log").read_text()


def test_a_claim_never_stops_the_run_of_a_newer_claim_of_its_task(tmp_path: Path) -> None:
    """Only a run of an older claim is stopped before a task starts; a recorded run of the same or a newer claim is
    the task's current run, and the claim at hand is the stale one: NewerRunRecorded, and the run lives on."""
    settings = Settings(coherence_home=tmp_path / "home", agent_kill_grace_seconds=1)
    now = datetime.now(UTC)
    task = Task.model_validate({"id": 9, "task_type": "run", "status": "running", "direction": "d",
                                "claim_token": 2, "created_at": now, "updated_at": now})
    group = TaskGroup(["sleep", "300"], settings, task, "runner", cwd=tmp_path, env=dict(os.environ))
    try:
        for stale in (1, 2):
            with pytest.raises(NewerRunRecorded, match="run 2 of task 9 is running on this host"):
                stop_previous_runs(settings, 9, stale)
        assert group.proc.poll() is None and len(records(settings.coherence_home)) == 1
        assert stop_previous_runs(settings, 8, 1) == []  # another task's run is none of its business
        stopped = stop_previous_runs(settings, 9, 3)
        assert len(stopped) == 1 and "task 9 (run 2)" in stopped[0] and "killed" in stopped[0]
        assert group.proc.wait(10) is not None and records(settings.coherence_home) == []
    finally:
        group.close()


def test_a_guard_whose_runner_dies_right_after_its_go_stops_the_task(tmp_path: Path) -> None:
    """The runner says go and dies before it reads the guard's answer (a SIGKILL at that moment, seen by the chaos
    bench): the guard's answer meets a closed socket, and the task it just started must still die with the runner,
    not run to its end as an orphan."""
    import socket

    import coherence_network.taskgroups as taskgroups

    ours, theirs = socket.socketpair()
    guard = subprocess.Popen([sys.executable, "-I", taskgroups.__file__, str(theirs.fileno()), "1", str(tmp_path),
                              "--", sys.executable, "-c", "import time; time.sleep(60)"],
                             pass_fds=(theirs.fileno(),), start_new_session=True)
    theirs.close()
    try:
        ours.sendall(taskgroups.GO)
        ours.close()  # the runner is gone before the guard answers "started"
        guard.wait(30)
        wait_until(lambda: not taskgroups.members([guard.pid]), 10, "the task of the runner that died stopped")
    finally:
        if taskgroups.members([guard.pid]):
            os.killpg(guard.pid, signal.SIGKILL)


def test_a_start_called_off_at_the_last_moment_starts_nothing(tmp_path: Path) -> None:
    """The runner renews a stale lease in ``before_start``, after the guard (a process, slow on a loaded host) is
    up and just before it is told to start the task: a lease that cannot be renewed calls the start off."""
    settings = Settings(coherence_home=tmp_path / "home")
    now = datetime.now(UTC)
    task = Task.model_validate({"id": 5, "task_type": "run", "status": "running", "direction": "d",
                                "claim_token": 1, "created_at": now, "updated_at": now})
    marker = tmp_path / "ran"
    seen: list[tuple[int, bool]] = []

    def lease_gone() -> None:
        (record,) = records(settings.coherence_home)
        seen.append((int(str(record["pgid"])), process_gone(int(str(record["pgid"])))))
        raise ClaimLost("the claim went to another runner")

    with pytest.raises(ClaimLost, match="another runner"):
        TaskGroup([PY, "-c", f"open({str(marker)!r}, 'w').close()"], settings, task, "runner", cwd=tmp_path,
                  env=dict(os.environ), before_start=lease_gone)
    (guard_pid, guard_gone), = seen
    assert not guard_gone  # asked at the last moment: the guard was already running
    wait_until(lambda: process_gone(guard_pid), 10, "the guard to go")
    assert not marker.exists() and records(settings.coherence_home) == []
