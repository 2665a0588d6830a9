"""Real runner processes against a real API: the agent protocol end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus
from tests.support.api import ApiProcess, ServedApi
from tests.support.net import wait_until
from tests.support.runner import RunnerProcess

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]

# Task commands the tests run: small programs written to files, so no quoting games in the task command.
SLEEPER = """
import os, sys, time
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
print("working", flush=True)
time.sleep(300)
"""
AGENT = """
import os, sys
print("prompt: " + open(sys.argv[1]).read().replace("\\n", " | "))
decision = os.environ.get("COHERENCE_DECISION")
print("env decision: " + decision if decision else "NEEDS_DECISION: Ship it?")
"""
SECOND_ATTEMPT_FINISHES = """
import os, sys, time
first = not os.path.exists(sys.argv[1])
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
if first:
    time.sleep(300)
print("second attempt done")
"""
# The task (sh) starts a child sh that becomes a sleep, and that child starts a grandchild sleep.
HANG_WITH_GRANDCHILDREN = """
echo "pid $$"
sh -c 'sleep 300 & echo "pid $!"; exec sleep 300' &
echo "pid $!"
wait
"""


def py(code: str) -> str:
    """A task command that runs ``code`` with this Python (quoted for shlex, never a shell)."""
    return f"{PY} -c {code!r}" if "'" not in code else f'{PY} -c "{code}"'


def program(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def process_gone(pid: int) -> bool:
    """Gone, or a zombie (dead, only waiting to be reaped by whichever process adopted it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def client(served_api: ServedApi) -> Iterator[ApiClient]:
    with ApiClient(served_api.url, token="", retries=0) as c:
        yield c


def runner(api: ApiProcess | ServedApi, *args: str, **env: str) -> RunnerProcess:
    return RunnerProcess(api.home, api.url, *args, env={"AGENT_KILL_GRACE_SECONDS": "1", **env})


def test_success_failure_and_logs(served_api: ServedApi, client: ApiClient) -> None:
    ok = client.create_task("greet", "run", command=py("print('hello from the task')"))
    bad = client.create_task("break", "run", command=py("import sys; print('oops'); sys.exit(3)"), max_attempts=1)
    dies = py("import os; print('bye', flush=True); os.kill(os.getpid(), 9)")
    killed = client.create_task("die", "run", command=dies, max_attempts=1)  # one run: no automatic retry
    done = runner(served_api, "--once", "--runner-id", "test-runner").run()
    assert done.returncode == 1  # tasks failed
    ok, bad = client.get_task(ok.id), client.get_task(bad.id)
    assert (ok.status, ok.exit_code, ok.output) == ("completed", 0, "hello from the task\n")
    assert (bad.status, bad.exit_code, bad.output) == ("failed", 3, "oops\n")
    assert (bad.error_category, bad.error_summary) == ("nonzero_exit", "exit 3: oops")
    assert (ok.error_category, ok.error_summary) == (None, None)
    killed = client.get_task(killed.id)
    assert (killed.status, killed.exit_code, killed.error_category) == ("failed", -9, "killed")
    assert killed.error_summary == "killed by SIGKILL: bye"
    log = (served_api.home / "logs" / f"task_{ok.id}.log").read_text()
    assert f"=== task {ok.id} type=run run=1 runner=test-runner" in log
    assert "=== start: " in log and f"=== command: {PY} -c" in log and "hello from the task" in log
    assert "exit_code=0 duration=" in log and "status=completed" in log
    runner_log = (served_api.home / "logs" / "agent_runner.log").read_text()
    assert f"task {ok.id}: completed" in runner_log and f"task {bad.id}: failed (exit 3)" in runner_log
    # it ended and said so on its way out: stopped at once, not alive for a while, never dead
    (row,) = client.pipeline_status().runners
    assert (row.id, row.state, row.info["stopped"]) == ("test-runner", "stopped", "--once: no work left")


def test_once_exits_0_when_everything_completed(served_api: ServedApi, client: ApiClient) -> None:
    tasks = [client.create_task(f"task {i}", "run", command=py(f"print({i})")) for i in range(3)]
    assert runner(served_api, "--once", "--workers", "2").run().returncode == 0
    assert [client.get_task(t.id).status for t in tasks] == ["completed"] * 3


def test_timeout_kills_the_whole_process_group(served_api: ServedApi, client: ApiClient, tmp_path: Path) -> None:
    hang = program(tmp_path, "hang.sh", HANG_WITH_GRANDCHILDREN)
    task = client.create_task("hang", "run", command=f"sh {hang}", timeout_seconds=2, max_attempts=1)
    runner(served_api, "--once").run()
    task = client.get_task(task.id)
    assert task.status == "failed" and task.exit_code in (-15, -9)
    assert "timed out after 2s" in task.output
    assert task.error_category == "timeout" and task.error_summary.startswith("timed out after 2s: pid ")
    assert "timed out after 2s" in (served_api.home / "logs" / f"task_{task.id}.log").read_text()
    pids = [int(line.split()[1]) for line in task.output.splitlines() if line.startswith("pid ")]
    assert len(pids) == 3, task.output
    for pid in pids:
        assert process_gone(pid), f"process {pid} of the timed-out task is still running"


def test_decision_round_trip_through_the_api(served_api: ServedApi, client: ApiClient, tmp_path: Path) -> None:
    agent = program(tmp_path, "agent.py", AGENT)
    template = f"{PY} {agent} {{prompt_file}}"
    task = client.create_task("Decide whether to ship", "spec")
    runner(served_api, "--once", COHERENCE_AGENT_COMMAND=template).run()
    waiting = client.get_task(task.id)
    assert waiting.status == "needs_decision" and waiting.decision_prompt == "Ship it?"
    # exactly what an operator types: PATCH {"decision": "yes"}
    client.request("PATCH", f"/api/agent/tasks/{task.id}", json={"decision": "yes"})
    runner(served_api, "--once", COHERENCE_AGENT_COMMAND=template).run()
    done = client.get_task(task.id)
    assert done.status == "completed" and done.exit_code == 0
    assert "env decision: yes" in done.output
    assert "Decide whether to ship" in done.output and "The operator decided: yes" in done.output


def test_agent_template_passes_the_prompt_as_one_argument(served_api: ServedApi, client: ApiClient) -> None:
    direction = "Write the spec for item 1; $(rm -rf /) and `x` stay text"
    as_file = client.create_task(direction, "spec")
    runner(served_api, "--once", COHERENCE_AGENT_COMMAND=f"{PY} -c \"import sys; print(open(sys.argv[1]).read())\" "
           "{prompt_file}").run()
    assert client.get_task(as_file.id).output == direction + "\n"
    as_arg = client.create_task(direction, "impl")
    as_argument = f"{PY} -c \"import sys; print(sys.argv[1:])\" {{prompt}}"
    runner(served_api, "--once", COHERENCE_AGENT_COMMAND=as_argument).run()
    assert client.get_task(as_arg.id).output == repr([direction]) + "\n"


def test_a_task_without_a_command_fails_with_the_reason(served_api: ServedApi, client: ApiClient) -> None:
    spec = client.create_task("no template configured", "spec")
    run = client.create_task("a run task never uses the template", "run")
    done = runner(served_api, "--once", COHERENCE_AGENT_COMMAND="").run()
    assert done.returncode == 1
    spec, run = client.get_task(spec.id), client.get_task(run.id)
    assert spec.status == "failed" and "COHERENCE_AGENT_COMMAND is not set" in spec.output
    assert run.status == "failed" and "a run task needs a command" in run.output
    assert (spec.error_category, run.error_category) == ("config_error", "config_error")
    assert spec.error_summary == "not started: task has no command and COHERENCE_AGENT_COMMAND is not set"


def test_killed_runner_task_is_finished_by_another_after_the_lease(tmp_path: Path) -> None:
    api = ServedApi(tmp_path / "home", env={"COHERENCE_LEASE_SECONDS": "2"}).start()
    first = second = None
    try:
        with ApiClient(api.url, token="") as client:
            pids = tmp_path / "pids"
            script = program(tmp_path, "task.py", SECOND_ATTEMPT_FINISHES)
            task = client.create_task("survive", "run", command=f"{PY} {script} {pids}")
            first = runner(api).start()
            wait_until(lambda: client.get_task(task.id).status == "running" and pids.exists(), 30, "first run")
            first.signal(signal.SIGKILL)
            first.wait()
            killed_at = time.monotonic()
            second = runner(api).start()
            wait_until(lambda: client.get_task(task.id).status == "completed", 60, "second runner finishes")
            done = client.get_task(task.id)
            assert done.attempts == 1 and done.claim_token == 2  # the expired lease counted; the second run used none
            assert done.output == "second attempt done\n"
            assert time.monotonic() - killed_at < 30
    finally:
        for proc in (first, second):
            if proc:
                proc.stop()
        api.stop()


def test_lost_claim_stops_the_task_and_drops_its_result(tmp_path: Path) -> None:
    """A runner that froze past its lease (a zombie) gets 409 on its next heartbeat: it kills its run, drops it."""
    api = ServedApi(tmp_path / "home", env={"COHERENCE_LEASE_SECONDS": "2"}).start()
    proc = None
    try:
        with ApiClient(api.url, token="") as client:
            pids = tmp_path / "pids"
            script = program(tmp_path, "task.py", SECOND_ATTEMPT_FINISHES)
            task = client.create_task("zombie", "run", command=f"{PY} {script} {pids}")
            proc = runner(api).start()
            wait_until(lambda: client.get_task(task.id).status == "running" and pids.exists(), 30, "first run")
            proc.signal(signal.SIGSTOP)
            wait_until(lambda: client.get_task(task.id).status == "pending", 30, "lease expired")
            proc.signal(signal.SIGCONT)
            wait_until(lambda: client.get_task(task.id).status == "completed", 60, "second attempt")
            done = client.get_task(task.id)
            assert (done.attempts, done.output) == (1, "second attempt done\n")
            first_pid = int(pids.read_text().split()[0])
            assert process_gone(first_pid)
            assert "claim lost" in (api.home / "logs" / "agent_runner.log").read_text()
            assert "=== claim lost" in (api.home / "logs" / f"task_{task.id}.log").read_text()
    finally:
        if proc:
            proc.stop()
        api.stop()


def test_result_survives_an_api_outage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    api = ServedApi(home).start()
    proc = None
    try:
        gate = tmp_path / "gate"
        code = (f"import os,time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
                "print('finished while the API was down')")
        with ApiClient(api.url, token="") as client:
            task = client.create_task("outage", "run", command=py(code))
        proc = runner(api, COHERENCE_RUNNER_HEARTBEAT_SECONDS="0.5").start()
        with ApiClient(api.url, token="") as client:
            wait_until(lambda: client.get_task(task.id).status == "running", 30, "task running")
        api.stop()
        gate.write_text("go")
        outbox = home / "run" / "runner_outbox"
        wait_until(lambda: any(outbox.glob("task_*.json")), 30, "result kept in the outbox")
        # the outage itself: the API stays down until the runner has found it gone and is retrying
        runner_log = home / "logs" / "agent_runner.log"
        wait_until(lambda: "runner heartbeat failed" in runner_log.read_text(), 30, "the runner retrying")
        assert proc.proc is not None and proc.proc.poll() is None
        api = ServedApi(home, port=api.port).start()
        with ApiClient(api.url, token="") as client:
            wait_until(lambda: client.get_task(task.id).status == "completed", 60, "result delivered")
            assert client.get_task(task.id).output == "finished while the API was down\n"
        assert not any(outbox.glob("task_*.json"))
    finally:
        if proc:
            proc.stop()
        api.stop()


def test_an_api_outage_longer_than_the_lease_reruns_nothing(tmp_path: Path, migrated_store_url: str) -> None:
    """The API is SIGKILLed for twice the lease while one task runs and another finishes; once it is back the
    runner renews the running task and delivers the finished result within a couple of seconds, not a heartbeat
    interval (15 s) later, and neither task runs again."""
    home, lease = tmp_path / "home", 3.0
    env = {"DATABASE_URL": migrated_store_url, "COHERENCE_LEASE_SECONDS": str(lease)}
    api = ApiProcess(home, env=env).start()
    proc = None
    try:
        def gated(name: str) -> str:
            gate, runs = tmp_path / f"gate_{name}", tmp_path / f"runs_{name}"
            return py(f"import os,time\nopen({str(runs)!r}, 'a').write('run\\n')\n"
                      f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\nprint('{name} done')")

        with ApiClient(api.url, token="") as client:
            long, short = (client.create_task(name, "run", command=gated(name)) for name in ("long", "short"))
            proc = runner(api, "--workers", "2", COHERENCE_RUNNER_HEARTBEAT_SECONDS="15").start()
            wait_until(lambda: client.count_tasks().by_status.get(TaskStatus.RUNNING) == 2, 30,
                       "both tasks running")
        api.kill()
        (tmp_path / "gate_short").write_text("go")
        outbox = home / "run" / "runner_outbox"
        wait_until(lambda: any(outbox.glob("task_*.json")), 30, "result kept in the outbox")
        time.sleep(2 * lease)  # the outage itself: the leases expire while the API is down
        api = ApiProcess(home, env=env, port=api.port).start()
        back = time.monotonic()
        with ApiClient(api.url, token="") as client:
            wait_until(lambda: client.get_task(short.id).status == TaskStatus.COMPLETED, 10, "result delivered")
            assert time.monotonic() - back < 3

            def renewed() -> bool:
                running = client.get_task(long.id)
                assert (running.status, running.claim_token) == (TaskStatus.RUNNING, 1)
                return running.lease_expires_at is not None and running.lease_expires_at > datetime.now(UTC)

            wait_until(renewed, 10, "lease renewed")
            assert time.monotonic() - back < 3
            (tmp_path / "gate_long").write_text("go")
            wait_until(lambda: client.get_task(long.id).status == TaskStatus.COMPLETED, 30, "long task done")
            assert [client.get_task(t.id).claim_token for t in (long, short)] == [1, 1]
        assert [(tmp_path / f"runs_{name}").read_text() for name in ("long", "short")] == ["run\n", "run\n"]
    finally:
        if proc:
            proc.stop()
        api.stop()


def test_a_restarted_runner_delivers_what_its_predecessor_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    api = ServedApi(home).start()
    first = second = None
    try:
        gate = tmp_path / "gate"
        code = f"import os,time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)\nprint('kept')"
        with ApiClient(api.url, token="") as client:
            task = client.create_task("outbox", "run", command=py(code))
            first = runner(api).start()
            wait_until(lambda: client.get_task(task.id).status == "running", 30, "task running")
        api.stop()
        gate.write_text("go")
        outbox = home / "run" / "runner_outbox"
        wait_until(lambda: any(outbox.glob("task_*.json")), 30, "result kept in the outbox")
        first.signal(signal.SIGKILL)
        first.wait()
        api = ServedApi(home, port=api.port).start()
        second = runner(api).start()
        with ApiClient(api.url, token="") as client:
            wait_until(lambda: client.get_task(task.id).status == "completed", 60, "result delivered")
            assert client.get_task(task.id).output == "kept\n"
        # the file goes once the API's answer is back, a moment after the store shows the task completed
        wait_until(lambda: not any(outbox.glob("task_*.json")), 30, "outbox emptied after delivery")
    finally:
        for proc in (first, second):
            if proc:
                proc.stop()
        api.stop()


# Writes a result into the outbox the way the runner does, and is stuck halfway through (in the serialisation), so
# that a SIGKILL lands between the temp file's creation and its rename: the worst moment.
STUCK_WRITER = """
import os, sys, time
from pathlib import Path
from coherence_network.logfiles import write_json_atomic

def stuck_fsync(fd: int) -> None:  # a disk that never finishes: the writer stays halfway, its temp file written
    Path(sys.argv[2]).write_text("writing")
    time.sleep(300)

os.fsync = stuck_fsync
write_json_atomic(Path(sys.argv[1]), {"output": "a result"})
"""


def test_a_starting_runner_removes_the_temp_files_of_dead_writers(served_api: ServedApi, client: ApiClient,
                                                                  tmp_path: Path) -> None:
    outbox = served_api.home / "run" / "runner_outbox"
    writers = {}
    for name in ("killed", "alive"):
        marker = tmp_path / name
        writers[name] = subprocess.Popen([PY, "-c", STUCK_WRITER, str(outbox / f"task_{name}.json"), str(marker)])
        wait_until(marker.exists, 30, f"{name} writer halfway")
    writers["killed"].kill()
    writers["killed"].wait()
    temps = {name: [p for p in outbox.iterdir() if p.name.startswith(f".task_{name}.json.")] for name in writers}
    assert [len(found) for found in temps.values()] == [1, 1]
    proc = runner(served_api).start()
    try:
        wait_until(lambda: client.get("/api/agent/runners")["items"] != [], 30, "runner started")
        assert not temps["killed"][0].exists()  # its writer is dead: nobody will ever rename it
        assert temps["alive"][0].exists()  # a live writer's file is left alone
        assert sorted(p.name for p in outbox.iterdir()) == [temps["alive"][0].name]
    finally:
        proc.stop()
        writers["alive"].kill()
        writers["alive"].wait()


def test_sigterm_releases_a_long_task(served_api: ServedApi, client: ApiClient, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    sleeper = program(tmp_path, "sleeper.py", SLEEPER)
    task = client.create_task("long", "run", command=f"{PY} {sleeper} {pids}")
    proc = runner(served_api, "--grace", "0.5").start()
    try:
        wait_until(lambda: client.get_task(task.id).status == "running" and pids.exists(), 30, "task running")
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        released = client.get_task(task.id)
        assert released.status == "pending" and released.claimed_by is None
        assert process_gone(int(pids.read_text()))
        log = (served_api.home / "logs" / f"task_{task.id}.log").read_text()
        assert "runner is stopping" in log and "status=pending" in log
    finally:
        proc.stop()


def test_idle_runner_stops_promptly_on_sigterm(served_api: ServedApi, client: ApiClient) -> None:
    """A stopped runner exits 0 even after a task failed (only --once reports failures in its exit code), and
    does not wait for the long poll its idle slot has parked on the API (30 s by default)."""
    task = client.create_task("break", "run", command=py("raise SystemExit(2)"))
    proc = runner(served_api).start()
    try:
        wait_until(lambda: client.get_task(task.id).status == "failed", 30, "task failed")
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0  # well inside the long poll: it was not waited for
    finally:
        proc.stop()


def test_idle_runner_starts_a_new_task_well_under_a_second(served_api: ServedApi, client: ApiClient) -> None:
    proc = runner(served_api).start()
    try:
        wait_until(lambda: client.get("/api/agent/runners")["items"] != [], 30, "runner registered")
        time.sleep(0.5)  # nothing observable marks the parked long poll: give the idle runner time to park it
        code = "import datetime; print(datetime.datetime.now(datetime.timezone.utc).isoformat())"
        task = client.create_task("when", "run", command=py(code))
        created = task.created_at
        wait_until(lambda: client.get_task(task.id).status == "completed", 30, "task done")
        started = datetime.fromisoformat(client.get_task(task.id).output.strip())
        assert (started - created).total_seconds() < 1.0
    finally:
        proc.stop()


def test_script_hands_over_to_the_cli() -> None:
    done = subprocess.run([str(ROOT / "scripts" / "agent_runner.py"), "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PATH": f"{Path(PY).parent}:{os.environ['PATH']}"})
    assert done.returncode == 0 and "--workers" in done.stdout and "--once" in done.stdout
