"""bench/chaos.py measures what it claims: its task records, and the report it draws from them.

A full chaos run takes minutes (it waits out leases and an outage), so the tests check its two halves apart: the
task helper as a real process (its lines, its ancestors, its last word on SIGTERM), and the analysis on a record
whose overlaps, re-runs and losses are known.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.net import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_bench", ROOT / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run_helper(chaos: ModuleType, tmp_path: Path, task: int, seconds: float) -> subprocess.Popen[bytes]:
    script = tmp_path / "chaos_task.py"
    script.write_text(chaos.TASK_SCRIPT)
    (tmp_path / "runs").mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "events.log"), str(tmp_path / "runs"), str(seconds),
         str(chaos.BEAT)],
        env={**os.environ, "COHERENCE_TASK_ID": str(task)},
    )


def test_the_task_records_its_runs_its_parent_and_a_sigterm(chaos: ModuleType, tmp_path: Path) -> None:
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
    assert second.how == "term" and second.pid == stopped.pid


def test_the_report_counts_overlaps_reruns_recovery_and_losses(chaos: ModuleType) -> None:
    log = chaos.EventLog(Path("unused"))
    for line in [
        "start 1 1 5.0 11 100,1", "alive 1 1 9.5 11", "end 1 1 20.0 11",  # outlives its runner, killed at 10
        "start 1 2 17.0 12 200,1", "end 1 2 25.0 12",  # re-run 7 s after the kill: 3 s twice at once
        "start 2 1 28.0 13 200,1", "alive 2 1 43.0 13", "term 2 1 44.0 13",  # in flight through the outage
        "start 2 2 43.0 14 101,1", "end 2 2 50.0 14",  # re-run after the outage: 1 s twice at once
        "start 3 1 1.0 15 200,1", "end 3 1 2.0 15",
        "start 4 1 12.0 16 101,1", "end 4 1 13.0 16", "start 4 2 14.0 17 200,1", "end 4 2 15.0 17",  # no fault
        "start 5 1 8.0 18 300,1", "alive 5 1 9.6 18",  # killed with its runner at 10, never ran again
        "start 7 1 3.0 19 400,1", "alive 7 1 12.0 19",  # outlives its runner, then dies without a word
        "start 7 2 12.2 20 101,1", "end 7 2 13.0 20",  # so it ran until 12.0 + a beat at most: 0.3 s at once
    ]:
        log.add(line)
    lives = [chaos.RunnerLife(0, 0, 100, 0.0, 10.0), chaos.RunnerLife(0, 1, 101, 11.0),
             chaos.RunnerLife(1, 0, 200, 0.0), chaos.RunnerLife(2, 0, 300, 0.0, 10.0),
             chaos.RunnerLife(3, 0, 400, 0.0, 10.0)]
    outages = [chaos.ApiDown("api_outage", 30.0, 42.0)]
    tasks = [{"id": 1, "status": "completed"}, {"id": 2, "status": "completed"}, {"id": 3, "status": "completed"},
             {"id": 4, "status": "failed", "attempts": 2, "current_step": "exit 1"}, {"id": 5, "status": "pending"},
             {"id": 7, "status": "completed"}]

    report = chaos.analyse(list(log.runs.values()), lives, outages, tasks, [1, 2, 3, 4, 5, 6, 7])

    assert report["tasks"] == {
        "created": 7, "completed": 4, "failed": 1, "failed_tasks": [{"id": 4, "attempts": 2, "step": "exit 1"}],
        "lost": 2, "missing": [6], "not_final": [5], "extra": [], "completed_never_started": [],
    }
    assert report["executions"] == {"started": 10, "ended": 7, "terminated": 1, "killed": 2, "runner_unknown": 0}
    assert report["faults"]["runner_kills"] == 3 and report["faults"]["runner_kills_holding_a_task"] == 3
    overlaps = {(o["task"], o["cause"]): o["seconds"] for o in report["overlaps"]["items"]}
    assert overlaps == {(1, "runner_killed_while_running"): 3.0, (2, "api_outage"): 1.0,
                        (7, "runner_killed_while_running"): 0.3}
    causes = {r["task"]: r["cause"] for r in report["reruns"]["items"]}
    assert causes == {1: "runner_killed_while_running", 2: "api_outage", 4: "unexplained",
                      7: "runner_killed_while_running"}
    assert report["api_outage_reruns"] == 1
    assert report["recovery_seconds"] == {"count": 2, "p50": 4.6, "max": 7.0,
                                          "not_rerun": [{"task": 5, "runner": "runner 2.0"}]}
    assert not any(report["promises"].values())


def test_help_explains_the_options(chaos: ModuleType) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--help"],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--store", "--database-url", "--tasks", "--runners", "--kills", "--lease", "--reap-interval",
                   "--seed", "--json"):
        assert option in result.stdout
