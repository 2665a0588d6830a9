"""Every view tells the same truth: `coherence status` (--json and its exit code), `coherence doctor`, the console's
overview, /metrics, /api/ready and the Telegram alert, held together for a dead runner (SIGKILL), a stopped one
(SIGTERM), a monitor issue of each severity, and a store that refuses writes (a full disk).

Before, a stopped or dead runner counted as seen for 120 s, a low monitor issue halved the overview's health while
status said "ATTENTION none", every flag showed twice on the overview, and /api/ready said ready while every write
failed. One API (SQLite on a small disk of its own), one bot, real runner processes; nothing is slept on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from coherence_network.status_view import render_status
from tests.support.api import ServedApi
from tests.support.fake_telegram import TOKEN, FakeTelegram
from tests.support.net import wait_until
from tests.support.postgres import PostgresServer
from tests.support.runner import RunnerProcess
from tests.support.small_disk import fill, small_disk

CHAT = -1001
HEARTBEAT = 0.5  # the runners' interval: alive within 2 x 0.5 + 1 s, dead after
# A rule of the monitor's host for each severity, posted as the monitor posts them.
HOST_RULES = {"critical": "api_unreachable", "high": "disk_low", "medium": "stale_version", "low": "log_errors"}
HEALTH_BY_GRADE = {"critical": 0, "high": 50, "medium": 75, "low": 100}


@dataclass
class World:
    api: ServedApi
    disk: Path
    root: Path
    fake: FakeTelegram
    bot_state: Path

    def cli(self, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "COHERENCE_HOME": str(self.root / "cli"), "AGENT_API_BASE": self.api.url,
               "MONITOR_DISK_MIN_FREE_MB": "1"}
        return subprocess.Popen([sys.executable, "-m", "coherence_network.cli", *args], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def runner(self, name: str, *args: str) -> RunnerProcess:
        home = self.root / name
        home.mkdir()
        return RunnerProcess(home / "var", self.api.url, "--runner-id", name, *args,
                             env={"COHERENCE_RUNNER_HEARTBEAT_SECONDS": str(HEARTBEAT)}).start()

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.api.url}/api/agent/pipeline-status", timeout=10).json()

    def runner_state(self, name: str) -> str | None:
        return next((r["state"] for r in self.status()["runners"] if r["id"] == name), None)


pytestmark = pytest.mark.long  # a minute and a half in all, on one module-wide pipeline: started first


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("one-truth")
    with small_disk(root / "disk", 48) as disk:
        api = ServedApi(disk / "home").start()
        fake = FakeTelegram().start()
        bot_home = root / "bot"
        bot = subprocess.Popen(
            [sys.executable, "-m", "coherence_network.cli", "telegram"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "COHERENCE_HOME": str(bot_home), "AGENT_API_BASE": api.url,
                 "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE": fake.base, "TELEGRAM_POLL_TIMEOUT": "1",
                 "TELEGRAM_NOTIFY_INTERVAL": "0.2", "TELEGRAM_CHAT_IDS": str(CHAT),
                 "TELEGRAM_ALLOWED_USER_IDS": "1", "COHERENCE_HTTP_TIMEOUT": "5"})
        try:
            yield World(api, disk, root, fake, bot_home / "run" / "telegram_state.json")
        finally:
            bot.send_signal(signal.SIGTERM)
            bot.wait(15)
            api.stop()
            fake.stop()


def notifier_passes(world: World, passes: int = 2) -> None:
    """Wait until the bot's notifier has made ``passes`` more passes (it saves its state after each)."""
    for _ in range(passes):
        before = world.bot_state.stat().st_mtime_ns if world.bot_state.exists() else 0
        wait_until(lambda: world.bot_state.exists() and world.bot_state.stat().st_mtime_ns != before, 10,
                   "a notifier pass")


def alerts(world: World, code: str) -> list[str]:
    return [text for text in world.fake.texts(CHAT) if f"[{code}]" in text]


def metrics(world: World) -> dict[str, dict[str, float]]:
    """Gauge samples by name, keyed by their one label's value ("" for none)."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{world.api.url}/metrics", timeout=10).text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[next(iter(sample.labels.values()), "")] = sample.value
    return found


def section(page: str, label: str) -> str:
    start = page.index(f'aria-labelledby="{label}"')
    return page[start:page.index("</section>", start)]


def views(world: World) -> dict[str, Any]:
    """What every view says now."""
    status_run, doctor_run = world.cli("status", "--json"), world.cli("doctor", "--json")
    status_out, _ = status_run.communicate(timeout=60)
    doctor_out, _ = doctor_run.communicate(timeout=60)
    status, doctor = json.loads(status_out), json.loads(doctor_out)
    page = httpx.get(f"{world.api.url}/", timeout=10).text
    rows = re.findall(r'<th scope="row">([^<]+)</th><td>runner</td>.*?<span class="badge[^"]*">(\w+)</span>',
                      section(page, "orch"), re.S)
    return {
        "status": (status_run.returncode, {f["rule"]: f["severity"] for f in status["attention"]}),
        "status_json": status,
        "status_text": render_status(status),  # what `coherence status` prints, from the same JSON
        "doctor": (doctor_run.returncode, {c["name"]: c for c in doctor["checks"]}),
        "attention_html": section(page, "attention"),
        "health_pct": int(re.search(r"health (\d+)%", page).group(1)),  # type: ignore[union-attr]
        "runner_rows": dict(rows),
        "metrics": metrics(world),
        "ready": httpx.get(f"{world.api.url}/api/ready", timeout=10).status_code,
    }


def shown_once(html: str, code: str) -> bool:
    return len(re.findall(rf"\b{code}\b", html)) == 1


def test_dead_and_stopped_runners_are_told_apart_and_counted_alike_everywhere(world: World) -> None:
    api = world.api.url
    dead = world.runner("dead")
    wait_until(lambda: world.runner_state("dead") == "alive", 30, "the runner registered")
    dead.signal(signal.SIGKILL)  # no last word: it stops counting once its heartbeat interval has passed
    dead.wait()
    task = httpx.post(f"{api}/api/agent/tasks", json={"direction": "work", "task_type": "run", "command": "true"},
                      timeout=10).json()
    wait_until(lambda: world.runner_state("dead") == "dead", 2 * HEARTBEAT + 5, "the killed runner dead")

    seen = views(world)
    assert seen["status"] == (1, {"no_runner": "high"})
    assert "runners: 0 alive, 0 stopped, 1 dead" in seen["status_text"] and "dead (" in seen["status_text"]
    code, doctor = seen["doctor"]
    assert code == 1 and not doctor["health"]["ok"] and "no_runner" in doctor["health"]["detail"]
    assert doctor["health"]["command"] == "coherence runner" and doctor["runner_seen"]["warn"]
    assert shown_once(seen["attention_html"], "no_runner") and seen["runner_rows"] == {"dead": "dead"}
    assert seen["health_pct"] == 50
    assert seen["metrics"]["coherence_health_issues"]["no_runner"] == 1
    assert seen["metrics"]["coherence_runners"] == {"alive": 0, "stopped": 0, "dead": 1}
    assert seen["metrics"]["coherence_runners_seen"][""] == 0
    assert seen["ready"] == 200  # a dead runner does not stop this API from serving
    wait_until(lambda: alerts(world, "no_runner"), 10, "the Telegram alert")
    assert alerts(world, "no_runner")[0].endswith("-> coherence runner")

    # a runner that is stopped says so on its way out: stopped at once, not "seen" for a while, never red
    stopped = world.runner("stopped", "--types", "spec")  # takes no `run` task: the work stays pending
    wait_until(lambda: world.runner_state("stopped") == "alive", 30, "the second runner registered")
    assert "no_runner" not in {f["rule"] for f in world.status()["attention"]}  # a live runner, whatever its types
    stopped.signal(signal.SIGTERM)
    assert stopped.wait() == 0
    row = next(r for r in world.status()["runners"] if r["id"] == "stopped")  # the first read after its exit
    assert (row["state"], row["seen"], row["info"]["stopped"]) == ("stopped", False, "SIGTERM")
    seen = views(world)
    assert seen["status"] == (1, {"no_runner": "high"})
    assert "runners: 0 alive, 1 stopped, 1 dead" in seen["status_text"]
    assert "stopped (SIGTERM)" in seen["status_text"]
    assert seen["runner_rows"] == {"stopped": "stopped", "dead": "dead"}
    assert seen["metrics"]["coherence_runners"] == {"alive": 0, "stopped": 1, "dead": 1}
    assert len(alerts(world, "no_runner")) == 1  # the same condition: told once

    # a live runner takes the work; only it counts
    alive = world.runner("alive")
    try:
        wait_until(lambda: httpx.get(f"{api}/api/agent/tasks/{task['id']}", timeout=10).json()["status"]
                   == "completed", 30, "the task done by the live runner")
        seen = views(world)
        assert seen["status"] == (0, {})
        assert "runners: 1 alive, 1 stopped, 1 dead" in seen["status_text"] and "ATTENTION\n  none" in \
            seen["status_text"]
        assert seen["doctor"][0] == 0 and not seen["doctor"][1]["runner_seen"]["warn"]
        assert seen["runner_rows"] == {"alive": "alive", "stopped": "stopped", "dead": "dead"}
        assert seen["metrics"]["coherence_runners"] == {"alive": 1, "stopped": 1, "dead": 1}
        assert seen["metrics"]["coherence_runners_seen"][""] == 1 and seen["health_pct"] == 100
        assert "exit None" not in seen["status_text"] and "(exit 0, " in seen["status_text"]
    finally:
        alive.signal(signal.SIGINT)  # Ctrl-C: the same last word
        alive.wait()
    row = next(r for r in world.status()["runners"] if r["id"] == "alive")
    assert (row["state"], row["info"]["stopped"]) == ("stopped", "SIGINT")


@pytest.mark.parametrize("severity", ["critical", "high", "medium", "low"])
def test_each_severity_of_monitor_issue_is_graded_alike_everywhere(world: World, severity: str) -> None:
    """critical and high need attention (exit 1, doctor not OK, an alert); medium is a warning; low is shown and
    changes nothing. None of them makes this API unready: that is for what stops it from serving."""
    rule = HOST_RULES[severity]
    issue = {"rule": rule, "severity": severity, "message": f"a {severity} fact of the host", "runbook": "#x"}
    monitor = f"{world.api.url}/api/agent/monitor-issues"
    httpx.post(monitor, json={"host": "vm1", "issues": [issue]}, timeout=10).raise_for_status()
    try:
        attention = severity in ("critical", "high")
        seen = views(world)
        assert seen["status"] == (1 if attention else 0, {rule: severity})
        flag = seen["status_json"]["attention"][0]
        assert (flag["source"], flag["host"]) == ("monitor", "vm1") and flag["command"].startswith(("coherence ",
                                                                                                    "make run"))
        label = {"critical": "ATTENTION", "high": "ATTENTION", "medium": "WARNING", "low": "INFO"}[severity]
        assert f"{label} [{severity}] {rule}: a {severity} fact of the host" in seen["status_text"]
        code, doctor = seen["doctor"]
        assert code == (1 if attention else 0)
        assert (doctor["monitor_issues"]["ok"], doctor["monitor_issues"]["warn"]) == \
            (not attention, severity == "medium")
        assert doctor["health"]["ok"] and rule in doctor["monitor_issues"]["detail"]
        assert shown_once(seen["attention_html"], rule)  # once: the monitor's copy, with its host
        assert seen["health_pct"] == HEALTH_BY_GRADE[severity]
        flags = seen["metrics"]["coherence_health_flags"]
        assert flags == {s: (1 if s == severity else 0) for s in HOST_RULES}
        assert seen["ready"] == 200
        if attention:
            wait_until(lambda: alerts(world, rule), 10, "the Telegram alert")
            assert alerts(world, rule) == [(f"Monitor issue on vm1: [{rule}] ({severity}) a {severity} fact of the "
                                            f"host -> {flag['command']}")]
        else:
            notifier_passes(world)
            assert alerts(world, rule) == []
    finally:
        httpx.post(monitor, json={"host": "vm1", "issues": []}, timeout=10).raise_for_status()


def test_a_store_that_refuses_writes_is_not_ready_in_every_view(world: World) -> None:
    """The one rule /api/ready and the rest share (store_not_ready, critical): a full disk under the SQLite store."""
    assert httpx.get(f"{world.api.url}/api/ready", timeout=10).status_code == 200
    filler = fill(world.disk)
    try:
        refused = httpx.post(f"{world.api.url}/api/agent/tasks", json={"direction": "d", "task_type": "spec"},
                             timeout=10)
        assert refused.status_code == 503  # every write fails...
        seen = views(world)
        assert seen["ready"] == 503  # ...and every view says so
        assert seen["status"] == (1, {"store_not_ready": "critical"})
        flag = seen["status_json"]["attention"][0]
        assert "store_writable" in flag["message"] and flag["command"] == "coherence cleanup --days 3"
        code, doctor = seen["doctor"]
        assert code == 1 and not doctor["api_ready"]["ok"] and not doctor["health"]["ok"]
        assert "store_not_ready" in doctor["health"]["detail"]
        assert shown_once(seen["attention_html"], "store_not_ready") and seen["health_pct"] == 0
        assert seen["metrics"]["coherence_health_issues"]["store_not_ready"] == 1
        assert seen["metrics"]["coherence_health_flags"]["critical"] == 1
        wait_until(lambda: alerts(world, "store_not_ready"), 10, "the Telegram alert")
    finally:
        filler.unlink()
    wait_until(lambda: httpx.get(f"{world.api.url}/api/ready", timeout=10).status_code == 200, 10, "ready again")
    assert "store_not_ready" not in {f["rule"] for f in world.status()["attention"]}


def test_a_read_only_postgresql_store_is_not_ready_in_every_view(postgres_server: PostgresServer,
                                                                   tmp_path: Path) -> None:
    """The same on the scale-out store: PostgreSQL answering but taking no writes (a standby after a failover, or
    default_transaction_read_only) used to leave /api/ready at 200."""
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": postgres_server.new_database(migrated=True)}).start()
    admin = sa.create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")

    def read_only(on: bool) -> None:
        with admin.connect() as conn:
            conn.execute(sa.text("ALTER SYSTEM SET default_transaction_read_only = on" if on
                                 else "ALTER SYSTEM RESET default_transaction_read_only"))
            conn.execute(sa.text("SELECT pg_reload_conf()"))

    def ready() -> int:
        return httpx.get(f"{api.url}/api/ready", timeout=10).status_code

    try:
        assert ready() == 200
        read_only(True)
        wait_until(lambda: ready() == 503, 10, "not ready once the store takes no writes")
        refused = httpx.post(f"{api.url}/api/agent/tasks", json={"direction": "d", "task_type": "spec"}, timeout=10)
        assert refused.status_code == 503, refused.text  # every write fails, as a store outage
        env = {**os.environ, "COHERENCE_HOME": str(tmp_path / "cli"), "AGENT_API_BASE": api.url}
        status = subprocess.run([sys.executable, "-m", "coherence_network.cli", "status", "--json"], env=env,
                                capture_output=True, text=True, timeout=60)
        (flag,) = json.loads(status.stdout)["attention"]
        assert status.returncode == 1 and (flag["rule"], flag["severity"]) == ("store_not_ready", "critical")
        assert "PostgreSQL store takes no writes" in flag["message"] and flag["command"] == "coherence doctor"
        gauge = {s.labels["rule"]: s.value for f in text_string_to_metric_families(
            httpx.get(f"{api.url}/metrics", timeout=10).text) if f.name == "coherence_health_issues" for s in f.samples}
        assert gauge["store_not_ready"] == 1
    finally:
        read_only(False)
        admin.dispose()
    try:
        wait_until(lambda: ready() == 200, 10, "ready again")
        assert httpx.post(f"{api.url}/api/agent/tasks", json={"direction": "d", "task_type": "spec"},
                          timeout=10).status_code == 201
    finally:
        api.stop()
