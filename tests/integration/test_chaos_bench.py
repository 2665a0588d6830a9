"""bench/chaos.py measures what it claims: its task records, and the report it draws from them.

A full chaos run takes minutes (it waits out leases and outages), so most tests check its parts apart: the
task helper as a real process (its lines, its ancestors, its last word on SIGTERM), and the analysis on a record
whose overlaps, re-runs and losses are known.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.net import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_bench", ROOT / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def helper_argv(chaos: ModuleType, tmp_path: Path, seconds: float) -> list[str]:
    """The task script's command line as the bench writes it (with an API address where nothing listens)."""
    script = tmp_path / "chaos_task.py"
    script.write_text(chaos.TASK_SCRIPT)
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "flags").mkdir(exist_ok=True)
    return [sys.executable, str(script), str(tmp_path / "events.log"), str(tmp_path / "runs"), str(seconds),
            str(chaos.BEAT), f"http://127.0.0.1:{free_port()}", str(tmp_path / "flags"), "0"]


def task_env(tmp_path: Path, task: int) -> dict[str, str]:
    """What the runner hands a task that the script reads: its id and the runner's home (for its log header)."""
    return {**os.environ, "COHERENCE_TASK_ID": str(task), "COHERENCE_HOME": str(tmp_path / "home")}


def run_helper(chaos: ModuleType, tmp_path: Path, task: int, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(helper_argv(chaos, tmp_path, seconds), env=task_env(tmp_path, task))


def test_the_task_records_its_runs_its_claim_its_parent_and_a_sigterm(chaos: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "home" / "logs").mkdir(parents=True)
    (tmp_path / "home" / "logs" / "task_7.log").write_text(
        "=== task 7 type=run run=3 runner=chaos-0.0\n...\n=== task 7 type=run run=4 runner=chaos-1.2\n")
    assert run_helper(chaos, tmp_path, 7, 1.2).wait(30) == 0
    stopped = run_helper(chaos, tmp_path, 7, 30)
    log = chaos.EventLog(tmp_path / "events.log")

    def second_run_alive() -> bool:
        log.read()
        return (7, 2) in log.runs and log.runs[(7, 2)].last_seen > log.runs[(7, 2)].start

    wait_until(second_run_alive, 30, "the second run's first alive line")
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(30) == 143
    log.read()
    first, second = log.runs[(7, 1)], log.runs[(7, 2)]
    assert first.how == "end" and 1.2 <= first.end - first.start < 5
    assert first.last_seen > first.start  # it said it was alive in between
    assert first.ancestors[0] == os.getpid() and second.ancestors[0] == os.getpid()
    assert (first.token, first.runner_id) == (4, "chaos-1.2")  # the last header: this run's
    assert first.check is not None and first.check.status == "noanswer"
    assert second.how == "term" and second.pid == stopped.pid


def test_a_task_that_takes_the_flag_kills_its_runner_just_after_it_exits(chaos: ModuleType, tmp_path: Path) -> None:
    argv = helper_argv(chaos, tmp_path, 0.2)
    (tmp_path / "flags" / "kill-at-end").touch()
    # a stand-in runner: its command line reads as one, it starts the task and then waits (as while delivering)
    runner = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\nsubprocess.run(sys.argv[3:])\ntime.sleep(60)\n",
         "coherence_network.cli", "runner", *argv], env=task_env(tmp_path, 9), start_new_session=True,
    )
    assert runner.wait(30) == -signal.SIGKILL
    log = chaos.EventLog(tmp_path / "events.log")
    log.read()
    assert log.dkills.keys() == {runner.pid} and not (tmp_path / "flags" / "kill-at-end").exists()
    assert log.runs[(9, 1)].how == "end" and log.dkills[runner.pid] >= log.runs[(9, 1)].end


def test_the_report_counts_every_promise_with_its_evidence(chaos: ModuleType) -> None:
    log = chaos.EventLog(Path("unused"))
    for line in [
        "start 1 1 5.0 11 100,1 1 chaos-0.0", "claim 1 1 5.1 11 1 running chaos-0.0 7.0 4.9",
        "alive 1 1 9.5 11", "end 1 1 20.0 11",  # outlives its runner, SIGKILLed at 10
        "start 1 2 17.0 12 200,1 2 chaos-1.0", "claim 1 2 17.1 12 2 running chaos-1.0 19.0 16.9",
        "end 1 2 25.0 12",  # re-run 7 s after the kill: 3 s twice at once
        "start 2 1 28.0 13 200,1 1 chaos-1.0", "alive 2 1 43.0 13", "term 2 1 44.0 13",  # through the API stop
        "start 2 2 43.0 14 101,1 2 chaos-0.1", "end 2 2 50.0 14",  # re-run after it: 1 s twice at once
        "start 3 1 1.0 15 200,1 1 chaos-1.0", "end 3 1 2.0 15",
        "start 4 1 12.0 16 101,1 1 chaos-0.1", "end 4 1 13.0 16",
        "start 4 2 14.0 17 200,1 2 chaos-1.0", "end 4 2 15.0 17",  # a re-run no fault explains
        "start 5 1 8.0 18 300,1 1 chaos-2.0", "alive 5 1 9.6 18",  # its runner died on its own at 10
        "start 7 1 3.0 19 400,1 1 chaos-3.0", "end 7 1 9.0 19", "dkill 7 1 9.02 400",  # killed delivering
        "start 7 2 12.2 20 101,1 2 chaos-0.1", "end 7 2 13.0 20",
        "start 8 1 20.0 21 200,1 1 chaos-1.0", "claim 8 1 20.1 21 1 running chaos-1.0 19.5 17.5",
        "end 8 1 21.0 21",  # its lease had expired half a second before it started
        "start 9 1 21.0 22 101,1 3 chaos-0.1", "end 9 1 22.0 22",
        "start 9 2 23.0 23 200,1 2 chaos-1.0", "claim 9 2 23.1 23 - noanswer - - -",
        "end 9 2 24.0 23",  # an older claim run after a newer one
        "start 10 1 60.0 30 101,1 1 chaos-0.1", "end 10 1 61.0 30",  # census: runner 0.1 runs two at once,
        "start 11 1 60.1 31 101,1 1 chaos-0.1", "end 11 1 61.0 31",
        "start 12 1 60.0 32 200,1 1 chaos-1.0", "end 12 1 61.0 32",  # so does runner 1.0,
        "start 13 1 60.2 33 200,1 1 chaos-1.0", "end 13 1 61.0 33",
        "start 14 1 60.0 34 401,1 1 chaos-3.1", "end 14 1 61.0 34",  # runner 3.1 only one at a time
        "start 15 1 62.0 35 401,1 1 chaos-3.1", "end 15 1 63.0 35",
    ]:
        log.add(line)
    lives = [chaos.RunnerLife(0, 0, 100, 0.0, 10.0, "runner_busy"), chaos.RunnerLife(0, 1, 101, 11.0),
             chaos.RunnerLife(1, 0, 200, 0.0), chaos.RunnerLife(2, 0, 300, 0.0, 10.0, "died"),
             chaos.RunnerLife(3, 0, 400, 0.0, log.dkills[400], "runner_delivering"), chaos.RunnerLife(3, 1, 401, 9.5)]
    faults = [chaos.Fault("api_stop", 30.0, 42.0),
              chaos.Fault("disk_full", 70.0, 73.0, {"charged": [{"task": 3, "attempts": 1, "claims": 2, "runs": 0}]})]
    census = [10, 11, 12, 13, 14, 15]
    tasks = [{"id": i, "status": "completed"} for i in (1, 2, 3, 7, 8, 9, *census)]
    tasks += [{"id": 4, "status": "failed", "attempts": 2, "current_step": "exit 1"}, {"id": 5, "status": "pending"}]

    report = chaos.analyse(list(log.runs.values()), lives, faults, tasks, [1, 2, 3, 4, 5, 6, 7, 8, 9, *census],
                           census, (4, 2), [{"id": "chaos-0.1", "info": {"workers": 2}},
                                                   {"id": "chaos-1.0", "info": {"workers": 2, "slots_alive": 1}}])

    assert report["tasks"] == {
        "created": 15, "completed": 12, "failed": 1, "failed_tasks": [{"id": 4, "attempts": 2, "step": "exit 1"}],
        "lost": 2, "missing": [6], "not_final": [5], "extra": [], "completed_never_started": [],
    }
    assert report["executions"] == {
        "started": 19, "ended": 17, "terminated": 1, "killed": 1, "runner_unknown": 0,
        "ran_to_their_end_after_their_runner_died": [
            {"task": 1, "run": 1, "runner": "runner 0.0", "started_after_death": -5.0, "ended_after_death": 10.0}],
    }
    assert report["faults"]["runner_kills"] == {"runner_busy": 1, "runner_delivering": 1, "runner_claiming": 0,
                                                "runner_backoff": 0}
    assert report["faults"]["runner_deaths_on_their_own"] == [{"runner": "runner 2.0", "at": 10.0}]
    assert {(o["task"], o["cause"]): o["seconds"] for o in report["overlaps"]["items"]} == {
        (1, "runner_killed"): 3.0, (2, "api_stop"): 1.0}
    assert {(s["task"], s["run"]): s["reasons"] for s in report["stale_claim_runs"]["items"]} == {
        (8, 1): ["lease expired 0.50s before the run started"], (9, 2): ["claim 2 started after claim 3 had run"]}
    assert report["stale_claim_runs"]["unchecked"] == 15  # started with no word from the API, and no newer claim
    assert {r["task"]: r["cause"] for r in report["reruns"]["items"]} == {2: "api_stop", 4: "unexplained",
                                                                          9: "unexplained"}
    assert report["reruns"]["by_cause"] == {"api_stop": 1, "runner_killed": 2, "unexplained": 2}
    assert report["disk_full_attempts"]["count"] == 1
    assert [(r["runner"], r["at_once"], r["dead"]) for r in report["slots"]["runners"]] == [
        ("runner 0.1", 2, 0), ("runner 1.0", 2, 1), ("runner 2 (not running)", 0, 2), ("runner 3.1", 1, 1)]
    assert report["slots"]["dead_slots"] == 4  # runner 1.0 ran two at once, but its heartbeat says one slot is dead
    assert report["slots"]["runners"][0]["heartbeat_info"] == {"workers": 2}
    assert report["recovery_seconds"] == {"count": 1, "p50": 7.0, "max": 7.0}
    assert not any(report["promises"].values())


# Every fault of the bench, each once, and every promise kept (issue 18): about a minute.
QUICK_FAULTS = ["runner_busy", "runner_delivering", "runner_claiming", "api_kill", "api_term", "api_stop",
                "store_outage", "disk_full"]


def test_a_quick_chaos_run_on_sqlite_keeps_its_promises() -> None:
    """The real thing, short: 4 runners x 2 slots on their own homes, a 3 s lease, each fault once (about a minute;
    the disk-full fault mounts a tmpfs: root, as in CI)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--quick", "--faults", ",".join(QUICK_FAULTS), "--json"],
        check=False, capture_output=True, text=True, timeout=240,
    )
    assert result.stdout, result.stderr[-3000:]
    report = json.loads(result.stdout)
    broken = {name for name, kept in report["promises"].items() if not kept}
    assert not broken, (broken, json.dumps({k: report[k] for k in ("overlaps", "stale_claim_runs", "reruns")}),
                        result.stderr[-3000:])
    kills = report["faults"]["runner_kills"]
    assert kills == {"runner_busy": 1, "runner_delivering": 1, "runner_claiming": 1, "runner_backoff": 1}, kills
    if os.geteuid() == 0 or os.environ.get("CI"):  # the disk-full fault mounts a tmpfs; elsewhere it says why not
        assert report["disk_full_attempts"]["ran"], report["faults"]
    assert report["faults"]["injected"][0]["unstarted_claims"]  # it did hold a claim it had not started
    assert report["tasks"]["lost"] == 0 and report["tasks"]["created"] > 20
    assert report["slots"]["census_tasks"] == 8 and report["slots"]["dead_slots"] == 0
    assert report["reruns"]["by_cause"].get("runner_killed", 0) >= 1  # the kills did hit running tasks


def test_help_explains_the_options(chaos: ModuleType) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--help"],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--store", "--database-url", "--quick", "--faults", "--runners", "--slots", "--kills", "--lease",
                   "--outage", "--seed", "--json", *chaos.FAULTS):
        assert option in result.stdout
