"""Doctor, status, the monitor's report and /metrics say the same thing, in the states where they used to disagree:
a decision waiting, dead runners (not seen past the setting, then forgotten), a stale project manager.

The thresholds are set on the API only: the commands run with the defaults, so a view that judged health
with its own settings (or a hard-coded window) would disagree with the API here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coherence_network import health
from coherence_network.clock import utcnow
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.settings import Settings
from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine, migrate
from tests.support.api import ServedApi
from tests.support.net import wait_until

SEEN_SECONDS = 3
FORGET_SECONDS = 6


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    api = ServedApi(tmp_path / "home", env={
        "MONITOR_RUNNER_SEEN_SECONDS": str(SEEN_SECONDS), "MONITOR_COMPONENT_SEEN_SECONDS": str(SEEN_SECONDS),
        "COHERENCE_RUNNER_FORGET_SECONDS": str(FORGET_SECONDS)}).start()
    yield api
    api.stop()


def coherence(api: ServedApi, *args: str) -> tuple[int, Any]:
    """A command as an operator runs it, with default settings; its exit code and its --json answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "COHERENCE_RUNNER_"))}
    env.update({"COHERENCE_HOME": str(api.home), "AGENT_API_BASE": api.url, "MONITOR_DISK_MIN_FREE_MB": "1"})
    done = subprocess.run([sys.executable, "-m", "coherence_network.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    return done.returncode, json.loads(done.stdout) if "--json" in args else done.stdout


def metrics(api: ServedApi) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{api.url}/metrics").text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def open_rules(api: ServedApi) -> set[str]:
    gauge = metrics(api)["coherence_health_issues"]
    assert {dict(labels)["rule"] for labels in gauge} == set(health.BY_NAME)  # every rule, 0 or 1
    return {dict(labels)["rule"] for labels, value in gauge.items() if value == 1}


def attention_by_metrics(api: ServedApi) -> int:
    """1 when a critical or high flag is open (coherence_health_flags{severity}), as status and doctor exit."""
    graded = {dict(labels)["severity"]: value for labels, value in metrics(api)["coherence_health_flags"].items()}
    return 1 if graded["critical"] or graded["high"] else 0


def heartbeat(api: ServedApi, runner_id: str) -> None:
    httpx.post(f"{api.url}/api/agent/runners/heartbeat",
               json={"runner_id": runner_id, "host": "h", "pid": 1, "version": "t"}).raise_for_status()


@contextmanager
def live_runner(api: ServedApi, runner_id: str) -> Iterator[None]:
    """A runner's heartbeats, well inside the seen window, for as long as the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            heartbeat(api, runner_id)
            if stop.wait(SEEN_SECONDS / 6):
                return

    thread = threading.Thread(target=beat, daemon=True)
    heartbeat(api, runner_id)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def every_view(api: ServedApi) -> dict[str, Any]:
    """What each view says needs attention (health rules only), and its exit code."""
    status_code, status = coherence(api, "status", "--json")
    doctor_code, doctor = coherence(api, "doctor", "--json")
    monitor_code, _ = coherence(api, "monitor", "--once")
    logs = api.home / "logs"
    issues = json.loads((logs / "monitor_issues.json").read_text())["issues"]
    report = json.loads((logs / "pipeline_status_report.json").read_text())
    check = next(c for c in doctor["checks"] if c["name"] == "health")
    return {
        "status": (status_code, {f["rule"] for f in status["attention"]}),
        "doctor": (doctor_code, {code for code in health.BY_NAME if f"{code}:" in check["detail"]}),
        "monitor": (monitor_code, set(issues) & set(health.BY_NAME)),
        "report": (monitor_code, {i["rule"] for i in report["layers"][3]["issues"]} & set(health.BY_NAME)),
        "metrics": (attention_by_metrics(api), open_rules(api)),
        "text": (logs / "pipeline_status_report.txt").read_text(),
        "doctor_checks": {c["name"]: c for c in doctor["checks"]},
        "pipeline": status,
    }


@pytest.mark.long
def test_every_view_agrees_on_health(api: ServedApi) -> None:
    base = f"{api.url}/api/agent"
    # a decision waiting, nothing else: doctor used to say "all checks OK" while status exited 1
    httpx.post(f"{base}/tasks", json={"direction": "ask", "task_type": TaskType.SPEC})
    asked = httpx.post(f"{base}/tasks/claim", json={"runner_id": "gone:1"}).json()
    httpx.post(f"{base}/tasks/{asked['id']}/finish", json={
        "claim_token": asked["claim_token"], "status": TaskStatus.NEEDS_DECISION, "decision_prompt": "red or blue?"})

    views = every_view(api)
    for name in ("status", "doctor", "monitor", "report", "metrics"):  # medium: a warning everywhere, exit 0
        assert views[name] == (0, {"needs_decision"}), name
    assert views["doctor_checks"]["health"]["warn"]
    assert views["doctor_checks"]["health"]["command"] == f"coherence decide {asked['id']} ANSWER"
    assert "needs_decision: 1 task(s) wait for a decision" in views["text"] and "(nothing)" not in views["text"]

    # dead runners (restarts leave old ids) and a stale project manager with work left, a task pending
    for runner_id in ("gone:1", "gone:2", "gone:3"):
        heartbeat(api, runner_id)
    httpx.post(f"{base}/components/heartbeat", json={
        "component": "project_manager", "host": "h", "pid": 2,
        "info": {"items": 5, "by_status": {"done": 4, "in_progress": 1}}}).raise_for_status()
    httpx.post(f"{base}/tasks", json={"direction": "next", "task_type": TaskType.RUN, "command": "true"})
    assert metrics(api)["coherence_runners_seen"][()] == 3
    wait_until(lambda: "manager_stale" in open_rules(api), 30, "runners and the manager past the seen window")

    views = every_view(api)
    expected = {"needs_decision", "no_runner", "manager_stale"}
    for name in ("status", "doctor", "monitor", "report", "metrics"):
        assert views[name] == (1, expected), name
    assert views["doctor_checks"]["runner_seen"]["warn"] and views["doctor_checks"]["manager_seen"]["warn"]
    assert not views["pipeline"]["project_manager"]["seen"]
    assert "runners seen 0" in views["text"] and "done 4, in_progress 1" in views["text"]
    assert "{'" not in views["text"] and "['" not in views["text"]  # values for people, never a Python repr

    # a live runner counts; the dead ones are forgotten after COHERENCE_RUNNER_FORGET_SECONDS, and counted
    with live_runner(api, "live:1"):
        wait_until(lambda: metrics(api)["coherence_runners_pruned_total"][()] == 3, 30, "dead runners pruned")
        assert metrics(api)["coherence_runners_seen"][()] == 1
        assert [r["id"] for r in httpx.get(f"{base}/runners").json()["items"]] == ["live:1"]
        views = every_view(api)
    for name in ("status", "doctor", "monitor", "report", "metrics"):
        assert views[name] == (0, {"needs_decision", "manager_stale"}), name  # two warnings
    assert not views["doctor_checks"]["runner_seen"]["warn"] and "runners seen 1" in views["text"]


def test_the_health_snapshot_and_pruning_on_both_stores(migrated_store_url: str) -> None:
    """The rules read the same snapshot from SQLite and PostgreSQL; pruning forgets only runners gone too long."""
    engine = create_store_engine(migrated_store_url)
    migrate(engine)
    store = TaskStore(engine, lease_seconds=30, max_attempts=2, tail_bytes=300)
    try:
        settings = Settings(_env_file=None, monitor_runner_seen_seconds=60)
        for runner_id in ("old", "new"):
            store.runner_heartbeat(runner_id, host="h", pid=1, version="t")
        store.create(direction="d", task_type=TaskType.RUN, command="true")
        claimed = store.claim("new")
        assert claimed is not None
        now = utcnow() + timedelta(seconds=120)  # both runners past the seen window, the lease expired
        snapshot = health.gather(store, settings, now)
        assert health.live_runners(snapshot) == 0 and snapshot.running[0]["lease_expires_at"] is not None
        assert {f["rule"] for f in health.evaluate(snapshot, settings)} == {"no_runner"}
        assert store.prune_runners(utcnow() + timedelta(seconds=1)) == 2 and store.runners() == []
        store.runner_heartbeat("new", host="h", pid=1, version="t")  # a live runner comes back by itself
        assert health.live_runners(health.gather(store, settings, utcnow())) == 1
        # a runner that said it stopped: stopped at once (not alive, not dead), and forgotten sooner than a dead one
        store.runner_heartbeat("done", host="h", pid=2, version="t",
                               info={"stopped": "SIGTERM", "heartbeat_seconds": 1})
        store.runner_heartbeat("beat", host="h", pid=3, version="t", info={"heartbeat_seconds": 1})
        derived = Settings(_env_file=None)  # MONITOR_RUNNER_SEEN_SECONDS not set: each runner's own interval counts
        states = {r["id"]: r["state"] for r in health.gather(store, derived, utcnow()).runners}
        assert states == {"new": "alive", "done": "stopped", "beat": "alive"}
        states = {r["id"]: r["state"] for r in health.gather(store, derived, utcnow() + timedelta(seconds=4)).runners}
        assert states == {"new": "alive", "done": "stopped", "beat": "dead"}  # its own interval: 2 x 1 s + 1 s
        later = utcnow() + timedelta(seconds=1)
        assert store.prune_runners(later - timedelta(hours=1), later) == 1
        assert sorted(r["id"] for r in store.runners()) == ["beat", "new"]
    finally:
        engine.dispose()
