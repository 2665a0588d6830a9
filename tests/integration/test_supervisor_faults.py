"""Faults stay local under the supervisor (issue 18): a flapping component is held back alone, clean exits and
restarts an operator asked for are not crashes, an API restart refuses no connection, and clearing a fatal issue
sticks, API up or down. One supervised pipeline serves several checks: each start costs seconds."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import signal
import time
from pathlib import Path

import httpx

from tests.support.net import wait_until
from tests.support.pipeline import PipelineProcess, alive

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")  # what opens each line of a component log
HELD = {"SUPERVISOR_MAX_BACKOFF_SECONDS": "600"}  # a held-back component stays down for the whole test


def _issues(home: Path) -> list[dict[str, object]]:
    path = home / "logs" / "fatal_issues.json"
    return json.loads(path.read_text()) if path.exists() else []


def _held(home: Path, component: str) -> bool:
    return any(i["component"] == component for i in _issues(home))


def _stored(pipeline: PipelineProcess) -> list[str]:
    items = httpx.get(f"{pipeline.url}/api/agent/fatal-issues", timeout=10).json()["items"]
    return sorted(str(i["component"]) for i in items)


def _replaced(pipeline: PipelineProcess, component: str, sig: int) -> int:
    """Signal the component, wait for the supervisor to run a new one; its pid."""
    old = pipeline.pid(component)
    assert old is not None and alive(old)
    os.kill(old, sig)
    wait_until(lambda: pipeline.pid(component) not in (None, old) and alive(pipeline.pid(component)), 30,
               f"a new {component}")
    return int(pipeline.pid(component) or 0)


async def _long_polls_during_sigterm(pipeline: PipelineProcess, runners: int) -> tuple[list[int], float, float]:
    """``runners`` claims long-poll (30 s); SIGTERM to the API. (their status codes, seconds until all were
    answered, seconds until a new connection made after the old API was gone got its answer)."""
    async with httpx.AsyncClient(base_url=pipeline.url, timeout=60) as client:
        polls = [asyncio.create_task(client.post("/api/agent/tasks/claim",
                                                 json={"runner_id": f"poll-{n}", "wait_seconds": 30}))
                 for n in range(runners)]
        await asyncio.sleep(1.0)  # every claim is waiting now
        old = pipeline.pid("api")
        assert old is not None and not any(p.done() for p in polls)
        signalled = time.monotonic()
        os.kill(old, signal.SIGTERM)
        answered = await asyncio.gather(*polls)
        all_answered = time.monotonic() - signalled
        while alive(old):
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=pipeline.url, timeout=30) as fresh:  # refused, without the held port
            assert (await fresh.get("/api/health")).status_code == 200
        return [r.status_code for r in answered], all_answered, time.monotonic() - signalled


def test_a_flapping_component_is_held_back_alone_and_clean_exits_are_no_crashes(
    tmp_path: Path, pipelines: list[PipelineProcess]
) -> None:
    home = tmp_path / "home"
    pipeline = PipelineProcess.started_in(pipelines, home, "--components", "api,agent_runner,monitor", **HELD)
    pipeline.wait_started("api", "agent_runner", "monitor", "supervisor")
    api, supervisor = pipeline.pid("api"), pipeline.pid("supervisor")

    for _ in range(5):  # exit 0 each time: restarted at once, never counted
        _replaced(pipeline, "agent_runner", signal.SIGTERM)
    for _ in range(2):  # restarts an operator asks for are not crashes either
        old = pipeline.pid("monitor")
        assert pipeline.cli("restart", "monitor", "--reason", "test").returncode == 0
        wait_until(lambda: pipeline.pid("monitor") not in (None, old), 30, "the monitor restarted")
    for _ in range(4):
        _replaced(pipeline, "monitor", signal.SIGKILL)
    monitor = pipeline.pid("monitor")
    assert monitor is not None
    os.kill(monitor, signal.SIGKILL)  # the 5th crash within the window: a fatal issue, the monitor held back
    wait_until(lambda: _held(home, "monitor"), 30, "the monitor's fatal issue")
    runner = pipeline.pid("agent_runner")
    wait_until(lambda: _stored(pipeline) == ["monitor"], 30, "the fatal issue in the store")
    assert [i["component"] for i in _issues(home)] == ["monitor"]  # recorded once, the runner's exits not at all
    assert "coherence_fatal_issues 1.0" in httpx.get(f"{pipeline.url}/metrics", timeout=10).text
    status = pipeline.cli("status")  # the rest runs on, so the held-back component must say so itself
    assert status.returncode == 1 and "monitor crashed 5 times" in status.stdout, status.stdout
    assert pipeline.pid("api") == api and pipeline.pid("supervisor") == supervisor and alive(runner)
    assert pipeline.proc is not None and pipeline.proc.poll() is None
    assert not alive(pipeline.pid("monitor"))  # held back
    shown = pipeline.cli("fatal")
    assert shown.returncode == 1 and "monitor crashed 5 times" in shown.stdout

    # SIGTERM to the API with 8 runners' long polls waiting: answered at once, and nothing refused meanwhile
    codes, answered, again = asyncio.run(_long_polls_during_sigterm(pipeline, 8))
    assert codes == [204] * 8 and answered < 5, (codes, answered)
    assert again < 5 and pipeline.pid("api") != api and alive(pipeline.pid("api"))
    log = (home / "logs" / "supervisor.log").read_text()
    assert "api exited with 0" in log and "restarting api now" in log
    stamps = [line[:24] for line in log.splitlines()]  # one clock opens every line, in time order
    assert all(STAMP.fullmatch(stamp) for stamp in stamps) and stamps == sorted(stamps), log[-3000:]
    assert "api | " in log  # the first API said its last lines, quoted after the exit they came before
    assert "restarting agent_runner now (a clean exit" in log and "agent_runner is held back" not in log
    assert alive(runner) and not alive(pipeline.pid("monitor"))

    # `coherence stop --port` finds the API serving the port, not the supervisor that holds its socket
    serving = pipeline.pid("api")
    stopped = pipeline.cli("stop", "--port", str(pipeline.port))
    assert stopped.returncode == 0 and f"pid {serving} " in stopped.stdout, stopped.stdout + stopped.stderr
    wait_until(lambda: pipeline.pid("api") not in (None, serving) and pipeline.api_up(), 30, "the API restarted")
    assert pipeline.pid("supervisor") == supervisor and pipeline.proc is not None and pipeline.proc.poll() is None

    # cleared with the API up: both copies go, and the held-back monitor starts again at once
    cleared = pipeline.cli("fatal", "--clear")
    assert cleared.returncode == 0 and "and those stored via the API" in cleared.stdout
    wait_until(lambda: alive(pipeline.pid("monitor")), 30, "the monitor started again")
    assert _stored(pipeline) == [] and pipeline.cli("fatal").returncode == 0


def test_a_flapping_api_is_held_back_and_a_clear_with_the_api_down_sticks(
    tmp_path: Path, pipelines: list[PipelineProcess]
) -> None:
    """The API cannot start (its store is not a database): held back, the supervisor and the monitor keep
    running; the operator fixes the store and clears with the API down: the API starts, and the store never shows
    the flag. Then a fatal issue in the store, cleared while the pipeline is stopped, stays cleared on the next
    start."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "coherence.db").write_text("not a database\n" * 100)
    pipeline = PipelineProcess.started_in(pipelines, home, "--components", "api,monitor",
                                          SUPERVISOR_FATAL_RESTARTS="2", **HELD)
    wait_until(lambda: _held(home, "api"), 60, "the API's fatal issue")
    pipeline.wait_started("monitor", "supervisor")
    assert not pipeline.api_up() and _issues(home)[0]["stored"] is False  # told to the store when it can be
    (home / "coherence.db").unlink()
    # the supervisor sees the local clear at once and starts the API, which may even answer the clear's request
    # waiting in its port's backlog: either way the clear sticks
    assert pipeline.cli("fatal", "--clear").returncode == 0
    wait_until(pipeline.api_up, 60, "the API started again once cleared")
    wait_until(lambda: not (home / "logs" / "fatal_clear_pending.json").exists(), 30, "the clear applied")
    assert _stored(pipeline) == [] and pipeline.proc is not None and pipeline.proc.poll() is None

    # a fatal issue the store holds, cleared with the pipeline stopped, does not come back on the next start
    httpx.post(f"{pipeline.url}/api/agent/fatal-issues", timeout=10,
               json={"component": "agent_runner", "reason": "crashed", "host": "elsewhere"}).raise_for_status()
    pipeline.stop()
    cleared = pipeline.cli("fatal", "--clear")
    assert cleared.returncode == 0 and "cleared when the API can be reached" in cleared.stdout
    again = PipelineProcess.started_in(pipelines, home, "--components", "api")
    again.wait_started("api")
    wait_until(lambda: not (home / "logs" / "fatal_clear_pending.json").exists(), 30, "the clear applied")
    assert _stored(again) == []
    trail = httpx.get(f"{again.url}/api/audit", params={"action": "clear_fatal"}, timeout=10).json()["items"]
    applied = [(r["actor"], r["channel"]) for r in trail if r["target"] == "agent_runner"]
    assert applied == [(f"cli:{pwd.getpwuid(os.getuid()).pw_name}", "cli")]  # the operator's, applied by the supervisor
    shown = again.cli("fatal")
    assert shown.returncode == 0 and "No fatal issues." in shown.stdout
