"""Retention on both stores: what a pass deletes and what it must keep, dry runs, batches, ids never reused; the
automatic passes of the API, the runner and the monitor; `coherence prune`; the resolutions file trimmed while the
monitor appends."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from coherence_network.client import ApiClient, ApiNotFound
from coherence_network.clock import utcnow
from coherence_network.contract import TaskStatus
from coherence_network.file_retention import append_line, trim_jsonl, trim_resolutions
from coherence_network.settings import Settings
from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine
from coherence_network.store.retention import prune_store
from coherence_network.store.schema import monitor_issues, runners, tasks
from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.runner import RunnerProcess

DAY = timedelta(days=1)


def settings_for(home: Path, **values: object) -> Settings:
    return Settings(coherence_home=home, **values)  # type: ignore[arg-type]


def finished(store: TaskStore, status: TaskStatus, age: timedelta, *, question: str | None = None) -> int:
    """A task claimed and ended in ``status``, its end moved ``age`` into the past."""
    task = store.create(direction=f"{status.value} {age}", task_type="run")
    claim = store.claim("test")
    assert claim is not None and claim["id"] == task["id"]
    store.finish(task["id"], claim["claim_token"], status=status.value, decision_prompt=question)
    backdate(store, task["id"], age)
    return int(task["id"])


def backdate(store: TaskStore, task_id: int, age: timedelta) -> None:
    when = utcnow() - age
    with store.transaction() as conn:
        conn.execute(tasks.update().where(tasks.c.id == task_id).values(finished_at=when, updated_at=when,
                                                                        created_at=when))


def ids(store: TaskStore) -> set[int]:
    with store.connection() as conn:
        return set(conn.execute(sa.select(tasks.c.id)).scalars())


def test_old_finished_tasks_go_recent_and_unfinished_stay(store: TaskStore, tmp_path: Path) -> None:
    old_done = [finished(store, TaskStatus.COMPLETED, 40 * DAY) for _ in range(5)]
    old_failed = finished(store, TaskStatus.FAILED, 31 * DAY)
    recent = finished(store, TaskStatus.COMPLETED, 29 * DAY)
    waiting = finished(store, TaskStatus.NEEDS_DECISION, 60 * DAY, question="ship it?")
    running = store.create(direction="still running", task_type="run")["id"]
    store.claim("test")
    backdate(store, running, 60 * DAY)
    pending = store.create(direction="never claimed", task_type="run", priority=-1)["id"]  # claims take others
    backdate(store, pending, 60 * DAY)
    newest = finished(store, TaskStatus.COMPLETED, 90 * DAY)  # the newest id: kept so SQLite never reuses it
    settings = settings_for(tmp_path, coherence_retain_tasks_days=30, coherence_prune_batch=2)

    dry = prune_store(store, settings, dry_run=True)
    assert dry.tasks == 6 and len(ids(store)) == 11  # a dry run removes nothing
    done = prune_store(store, settings)
    assert done.tasks == dry.tasks  # and counted what the real pass removes (over three batches of two)
    assert ids(store) == {recent, waiting, running, pending, newest}
    assert not ids(store) & {*old_done, old_failed}
    assert prune_store(store, settings).tasks == 0  # a second pass finds nothing

    after = store.create(direction="after pruning", task_type="run")["id"]
    assert after > newest  # ids are never handed out twice


def test_keep_forever_and_concurrent_passes(store: TaskStore, tmp_path: Path) -> None:
    for _ in range(30):
        finished(store, TaskStatus.COMPLETED, 400 * DAY)
    store.create(direction="newest", task_type="run")
    assert prune_store(store, settings_for(tmp_path, coherence_retain_tasks_days=0)).tasks == 0
    settings = settings_for(tmp_path, coherence_retain_tasks_days=30, coherence_prune_batch=3)
    results: list[int] = []
    passes = [threading.Thread(target=lambda: results.append(prune_store(store, settings).tasks)) for _ in range(3)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join()
    assert sum(results) == 30 and len(ids(store)) == 1  # two API replicas at once share the work, nothing more


def test_resolved_monitor_issues_and_forgotten_runners(store: TaskStore, tmp_path: Path) -> None:
    now = utcnow()
    row = {"severity": "high", "message": "m", "action": "a", "runbook": "#r", "host": "h", "first_seen": now}
    with store.transaction() as conn:
        conn.execute(monitor_issues.insert(), [
            {**row, "rule": "old", "last_seen": now, "resolved_at": now - 40 * DAY},
            {**row, "rule": "recent", "last_seen": now, "resolved_at": now - DAY},
            {**row, "rule": "open", "last_seen": now, "resolved_at": None},
            {**row, "rule": "old_newest", "last_seen": now, "resolved_at": now - 40 * DAY},
        ])
    store.runner_heartbeat("gone", host="h", pid=1, version="v")
    store.runner_heartbeat("alive", host="h", pid=2, version="v")
    with store.transaction() as conn:
        conn.execute(runners.update().where(runners.c.id == "gone").values(last_seen=now - DAY))
    settings = settings_for(tmp_path, coherence_retain_resolutions_days=30, coherence_runner_forget_seconds=3600)
    assert prune_store(store, settings, dry_run=True).monitor_issues == 1
    report = prune_store(store, settings)
    assert (report.monitor_issues, report.runners) == (1, 1)
    with store.connection() as conn:
        assert set(conn.execute(sa.select(monitor_issues.c.rule)).scalars()) == {"recent", "open", "old_newest"}
        assert set(conn.execute(sa.select(runners.c.id)).scalars()) == {"alive"}


# --- monitor_resolutions.jsonl ---------------------------------------------------------------------------------
def resolution(at: datetime, n: int) -> str:
    return json.dumps({"rule": f"r{n}", "resolved_at": at.isoformat()})


def test_resolutions_trimmed_by_age(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, coherence_retain_resolutions_days=30)
    path = tmp_path / "logs" / "monitor_resolutions.jsonl"
    now = datetime.now(UTC)
    for n, age in enumerate((45, 31, 29, 1)):
        append_line(path, resolution(now - age * DAY, n))
    append_line(path, "not json: kept")
    before = path.read_text()
    dry = trim_resolutions(settings, dry_run=True)
    assert (dry.removed, dry.kept) == (2, 3) and path.read_text() == before
    done = trim_resolutions(settings)
    assert (done.removed, done.bytes_freed) == (2, dry.bytes_freed)
    assert [json.loads(line)["rule"] for line in path.read_text().splitlines()[:2]] == ["r2", "r3"]
    assert path.read_text().endswith("not json: kept\n")


def test_lines_appended_while_trimming_are_never_lost(tmp_path: Path) -> None:
    """The trimming rename races appenders: every appended line must survive (or be trimmed for its age)."""
    path = tmp_path / "resolutions.jsonl"
    written = 2000
    stop = threading.Event()

    def appender() -> None:
        for n in range(written):
            append_line(path, json.dumps({"keep": True, "n": n}))
        stop.set()

    def trimmer() -> int:
        passes = 0
        while not stop.is_set():
            append_line(path, json.dumps({"keep": False}))
            trim_jsonl(path, lambda line: json.loads(line)["keep"])
            passes += 1
        return passes

    thread = threading.Thread(target=appender)
    thread.start()
    passes = trimmer()
    thread.join()
    trim_jsonl(path, lambda line: json.loads(line)["keep"])
    kept = [json.loads(line)["n"] for line in path.read_text().splitlines()]
    assert passes > 1 and kept == list(range(written))


# --- processes: the API's automatic pass, the runner's, `coherence prune` ---------------------------------------
def cli(home: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coherence_network.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COHERENCE_HOME": str(home), **env}, timeout=120)


def end_tasks(client: ApiClient, count: int, status: TaskStatus) -> list[int]:
    done = []
    for n in range(count):
        task = client.create_task(f"{status.value} {n}", "run")
        claim = client.claim("test")
        assert claim is not None and claim.id == task.id
        client.finish(task.id, claim.claim_token, status, exit_code=0)
        done.append(task.id)
    return done


def task_files(home: Path, task_id: int, *, age: timedelta) -> list[Path]:
    """The log and prompt file a runner leaves for a task, last written ``age`` ago."""
    paths = [home / "logs" / f"task_{task_id}.log", home / "run" / "prompts" / f"prompt_{task_id}.md"]
    stamp = time.time() - age.total_seconds()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"output of {task_id}\n" * 10)
        os.utime(path, (stamp, stamp))
    return paths


def test_prune_command_dry_run_then_real(store_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"DATABASE_URL": "" if store_url.startswith("sqlite") else store_url,
           "COHERENCE_RETAIN_TASKS_DAYS": "30", "COHERENCE_RETAIN_RESOLUTIONS_DAYS": "30"}
    api = ServedApi(home, env=env).start()
    env["AGENT_API_BASE"] = api.url
    try:
        engine = create_store_engine(env["DATABASE_URL"] or f"sqlite:///{home / 'coherence.db'}")
        store = TaskStore(engine)
        with ApiClient(api.url, token="") as client:
            old = end_tasks(client, 3, TaskStatus.COMPLETED) + end_tasks(client, 2, TaskStatus.FAILED)
            fresh = end_tasks(client, 1, TaskStatus.COMPLETED)
            running = client.create_task("running", "run")
            client.claim("test")
            newest = end_tasks(client, 1, TaskStatus.COMPLETED)
        for task_id in (*old, *newest):
            backdate(store, task_id, 40 * DAY)
        old_files = [path for task_id in old for path in task_files(home, task_id, age=40 * DAY)]
        old_bytes = sum(path.stat().st_size for path in old_files)
        kept_files = task_files(home, running.id, age=40 * DAY) + task_files(home, fresh[0], age=DAY)
        resolutions = home / "logs" / "monitor_resolutions.jsonl"
        append_line(resolutions, resolution(datetime.now(UTC) - 40 * DAY, 0))
        append_line(resolutions, resolution(datetime.now(UTC), 1))
        engine.dispose()

        dry = cli(home, "prune", "--dry-run", "--json", env=env)
        assert dry.returncode == 0, dry.stderr
        would = json.loads(dry.stdout)
        assert would["store"]["tasks"] == 5 and would["task_files"]["removed"] == 10
        assert would["resolutions"]["removed"] == 1 and would["task_files"]["kept_unfinished"] == 2
        assert all(path.exists() for path in old_files) and len(resolutions.read_text().splitlines()) == 2

        real = cli(home, "prune", "--json", env=env)
        assert real.returncode == 0, real.stderr
        did = json.loads(real.stdout)
        assert {**did, "dry_run": True} == would  # the dry run said exactly what the real one did
        assert did["task_files"]["bytes"] == old_bytes
        assert not any(path.exists() for path in old_files) and all(path.exists() for path in kept_files)
        assert len(resolutions.read_text().splitlines()) == 1
        with ApiClient(api.url, token="") as client:
            for task_id in old:
                with pytest.raises(ApiNotFound):
                    client.get_task(task_id)
            assert client.get_task(running.id).status == TaskStatus.RUNNING
            assert client.create_task("next", "run").id > newest[0]
        human = cli(home, "prune", "--dry-run", env=env)
        assert "would remove 1 finished tasks" in human.stdout  # the old newest, now that a newer task exists
    finally:
        api.stop()


def test_api_and_runner_prune_by_themselves(store_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"DATABASE_URL": "" if store_url.startswith("sqlite") else store_url, "COHERENCE_RETAIN_TASKS_DAYS": "30",
           "COHERENCE_PRUNE_INTERVAL_SECONDS": "0.5"}
    api = ServedApi(home, env=env).start()
    runner = None
    try:
        engine = create_store_engine(env["DATABASE_URL"] or f"sqlite:///{home / 'coherence.db'}")
        store = TaskStore(engine)
        with ApiClient(api.url, token="") as client:
            old = end_tasks(client, 2, TaskStatus.COMPLETED)
            end_tasks(client, 1, TaskStatus.COMPLETED)  # the newest stays
            for task_id in old:
                backdate(store, task_id, 40 * DAY)
            files = [path for task_id in old for path in task_files(home, task_id, age=40 * DAY)]

            def gone(task_id: int) -> bool:
                try:
                    client.get_task(task_id)
                except ApiNotFound:
                    return True
                return False

            wait_until(lambda: all(gone(task_id) for task_id in old), 30, "the API's retention pass")
        engine.dispose()
        # a pass may come between the two backdates: the passes' lines add up to the two tasks (a pass logs after it
        # commits, so its line may follow the tasks' going)
        def deleted() -> int:
            lines = re.findall(r"retention: deleted (\d+) finished tasks", (home / "logs" / "api.log").read_text())
            return sum(map(int, lines))

        wait_until(lambda: deleted() >= 2, 10, "the API's retention log line")
        assert deleted() == 2
        runner = RunnerProcess(home, api.url, "--interval", "0.2", env={**env, "COHERENCE_API_PORT": str(api.port)})
        runner.start()
        wait_until(lambda: not any(path.exists() for path in files), 60, "the runner's retention pass")
        wait_until(lambda: "retention: removed 4 task logs and prompt files"
                   in (home / "logs" / "agent_runner.log").read_text(), 10, "the runner's retention log line")
    finally:
        if runner is not None:
            runner.stop()
        api.stop()


def test_monitor_trims_its_resolutions_when_it_appends(served_api: ServedApi) -> None:
    api, logs = served_api, served_api.home / "logs"
    resolutions = logs / "monitor_resolutions.jsonl"
    append_line(resolutions, resolution(datetime.now(UTC) - 40 * DAY, 0))
    env = {"AGENT_API_BASE": api.url, "MONITOR_DISK_MIN_FREE_MB": "1", "COHERENCE_RETAIN_RESOLUTIONS_DAYS": "30"}
    with ApiClient(api.url, token="") as client:
        client.create_task("waits for a runner", "run", command="true")
    (logs / "agent_runner.log").write_text("2026-01-01T00:00:00Z INFO x: start\n")
    assert cli(api.home, "monitor", "--once", env=env).returncode == 1  # no runner: an issue opens
    with ApiClient(api.url, token="") as client:
        client.runner_heartbeat("h:1", "h", 1, "t", {})
    cli(api.home, "monitor", "--once", env=env)  # no_runner resolved: appended, and the old line trimmed
    assert [json.loads(line)["rule"] for line in resolutions.read_text().splitlines()] == ["no_runner"]
    assert "retention: removed 1 monitor resolutions" in (logs / "monitor.log").read_text()
