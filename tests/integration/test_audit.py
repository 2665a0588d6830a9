"""The audit trail (issue 21 item 7) on both stores: every operator action leaves exactly one record with the right
actor, channel, task or target, status before and after, and reason; a replay and a component's act leave none; the
trail reads newest first, filtered, by stable pages; retention keeps it longer than the tasks.

One API per store serves the module (with a token, as operators run it); each test acts on tasks and names of its
own, and reads the records back through GET /api/audit (the CLI's and the console's ways in are driven too)."""

from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import typer

import coherence_network.api  # noqa: F401  (first: the app imports the console's routes, not the other way round)
from coherence_network import pidfiles
from coherence_network.cli.audit import since_time
from coherence_network.client import ApiClient, ApiConflict, ApiNotFound
from coherence_network.clock import utcnow
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.contract_steering import AuditRecord
from coherence_network.setting_values import audit_days
from coherence_network.settings import Settings
from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine
from coherence_network.store.schema import audit, tasks
from coherence_network.supervisor import SELF as SUPERVISOR
from tests.support.api import ServedApi
from tests.support.net import free_port
from tests.support.postgres import PostgresServer

TOKEN = secrets.token_urlsafe(24)
CLI = [sys.executable, "-m", "coherence_network.cli"]
USER = pwd.getpwuid(os.getuid()).pw_name
RUNNER = "component:agent_runner"
_URGENCY = itertools.count(-1000)  # each task a test ends outranks every one left pending before it


@dataclass
class Trail:
    """The module's API and the test's own view of its store (to age rows, as time would)."""

    api: ServedApi
    store: TaskStore

    def client(self, actor: str | None = None) -> ApiClient:
        return ApiClient(base_url=self.api.url, token=TOKEN, retries=0, actor=actor)

    def records(self, **filters: Any) -> list[AuditRecord]:
        with self.client() as client:
            return client.audit(limit=500, **filters).items

    def cli(self, *args: str, api_url: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COHERENCE_HOME": str(self.api.home), "AGENT_API_BASE": api_url or self.api.url,
               "COHERENCE_API_TOKEN": TOKEN, "COHERENCE_HTTP_TIMEOUT": "5", "NO_COLOR": "1"}
        env.pop("DATABASE_URL", None)
        return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)

    def age(self, table: Any, row_id: int, days: float) -> None:
        when = utcnow() - timedelta(days=days)
        values = {"at": when} if table is audit else {"finished_at": when, "updated_at": when, "created_at": when}
        with self.store.transaction() as conn:
            conn.execute(table.update().where(table.c.id == row_id).values(**values))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def trail(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trail]:
    root = tmp_path_factory.mktemp(f"audit-{request.param}")
    if request.param == "sqlite":
        shutil.copy(request.getfixturevalue("migrated_sqlite_template"), root / "coherence.db")
        url = f"sqlite:///{root / 'coherence.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.new_database(migrated=True)
    api = ServedApi(root / "home", env={"DATABASE_URL": url, "COHERENCE_API_TOKEN": TOKEN}).start()
    engine = create_store_engine(url)
    yield Trail(api, TaskStore(engine))
    api.stop()
    engine.dispose()
    if request.param == "postgresql":
        server.drop_database(url)


def _moved(record: AuditRecord) -> tuple[str, str, str, int | None, str | None, str | None]:
    return (record.actor, record.channel, record.action, record.task_id, record.status_before, record.status_after)


def _ended(trail: Trail, status: TaskStatus, direction: str, **fields: Any) -> int:
    """A task a runner (a component: not audited) claimed and ended in ``status``."""
    with trail.client(RUNNER) as runner:
        task = runner.create_task(direction, TaskType.RUN, priority=next(_URGENCY))  # claimed before all else
        claimed = runner.claim("audit-runner", types=[TaskType.RUN])
        assert claimed is not None and claimed.id == task.id
        runner.finish(task.id, claimed.claim_token, status, **fields)
        return task.id


def test_an_operators_create_is_one_record_its_replay_and_a_components_none(trail: Trail) -> None:
    with trail.client("cli:alice") as alice:
        made = alice.create_task("audited create", TaskType.SPEC, idempotency_key="audit-create-1")
        again = alice.create_task("audited create", TaskType.SPEC, idempotency_key="audit-create-1")
    assert again.id == made.id
    assert [_moved(r) for r in trail.records(task_id=made.id)] == [
        ("cli:alice", "cli", "create", made.id, None, "pending")]
    with trail.client(RUNNER) as runner:
        own = runner.create_task("a component's own task", TaskType.SPEC)
        batch = runner.create_tasks([{"direction": "batch", "task_type": "spec"}])
    assert trail.records(task_id=own.id) == [] and trail.records(task_id=batch[0].id) == []
    with trail.client() as anonymous:  # no X-Coherence-Actor: someone with the token, through the API
        plain = anonymous.create_task("no actor named", TaskType.SPEC)
    assert [(r.actor, r.channel) for r in trail.records(task_id=plain.id)] == [("api", "api")]


def test_a_decision_and_a_retry_record_who_moved_the_task(trail: Trail) -> None:
    asked = _ended(trail, TaskStatus.NEEDS_DECISION, "asks", decision_prompt="ship it?")
    with trail.client("component:telegram") as bot:  # the bot's client; the decider is the Telegram user
        bot.decide(asked, "yes", "telegram:4242")
        bot.decide(asked, "yes", "telegram:4242")  # a retry after a lost answer: accepted, not recorded again
    [decided] = trail.records(task_id=asked)
    assert _moved(decided) == ("telegram:4242", "telegram", "decide", asked, "needs_decision", "pending")
    assert decided.detail == {"decision": "yes"}

    failed = _ended(trail, TaskStatus.FAILED, "fails", exit_code=1)
    with trail.client("cli:carol") as carol:
        carol.retry_task(failed)
        with pytest.raises(ApiConflict):
            carol.retry_task(failed)  # pending now: refused, nothing recorded
    assert [_moved(r) for r in trail.records(task_id=failed)] == [
        ("cli:carol", "cli", "retry", failed, "failed", "pending")]


def test_pause_and_resume_are_recorded_once_each(trail: Trail) -> None:
    with trail.client("cli:dave") as dave:
        assert dave.pause("cli:dave", "provider down", task_type="review").changed
        assert not dave.pause("cli:dave", "again", task_type="review").changed
        assert dave.resume("cli:dave", task_type="review").changed
        assert not dave.resume("cli:dave", task_type="review").changed
    records = trail.records(actor="cli:dave")
    assert [(r.action, r.target, r.reason) for r in records] == [("resume", "review", None),
                                                                 ("pause", "review", "provider down")]
    assert records[0].detail is not None and records[0].detail["paused_by"] == "cli:dave"


def test_an_operators_prune_is_recorded_with_what_it_deleted_and_old_records_go(trail: Trail) -> None:
    old_task = _ended(trail, TaskStatus.COMPLETED, "finished long ago")
    trail.age(tasks, old_task, 40)
    with trail.client("cli:old-timer") as old_timer:
        kept_task = old_timer.create_task("its create record ages out", TaskType.SPEC)
    [old_record] = trail.records(task_id=kept_task.id)
    trail.age(audit, old_record.id, 400)
    _ended(trail, TaskStatus.COMPLETED, "newer: the newest task row always stays")
    with trail.client("cli:old-timer") as old_timer:
        old_timer.create_task("newer: the newest audit row always stays", TaskType.SPEC)
    with trail.client("cli:erin") as erin:
        assert erin.prune(dry_run=True)["audit"] == 1  # counted, not deleted, not recorded
        assert trail.records(actor="cli:erin") == []
        done = erin.prune()
        assert erin.prune()["tasks"] == 0  # nothing left to delete: no second record
    assert done["tasks"] >= 1 and done["audit"] == 1
    assert trail.records(task_id=kept_task.id) == []  # kept 365 days, then deleted by the same pass
    [pruned] = trail.records(actor="cli:erin")
    assert pruned.action == "prune" and pruned.channel == "cli" and pruned.detail is not None
    assert pruned.detail["audit"] == 1 and pruned.detail["tasks"] == done["tasks"]
    with trail.client() as client, pytest.raises(ApiNotFound):
        client.get_task(old_task)  # deleted by the recorded pass


def test_clearing_fatal_issues_is_recorded_by_whoever_asked(trail: Trail) -> None:
    with trail.client("component:supervisor") as supervisor:
        supervisor.report_fatal_issue(component="monitor", reason="crash loop", detail="boom", recovery_tried="3",
                                      host="h1")
        assert supervisor.clear_fatal_issues(by="cli:frank") == 1  # a clear the supervisor applies for frank
        assert supervisor.clear_fatal_issues(by="cli:frank") == 0  # nothing left: nothing recorded
        supervisor.report_fatal_issue(component="agent_runner", reason="crash", detail="", recovery_tried="",
                                      host="h1")
        assert supervisor.clear_fatal_issues() == 1  # the supervisor's own act: not an operator's
    [cleared] = trail.records(action="clear_fatal", actor="cli:frank")
    assert (cleared.actor, cleared.channel, cleared.target) == ("cli:frank", "cli", "monitor")
    assert cleared.detail == {"cleared": 1, "before": None}


def test_a_restart_noted_through_the_api_is_one_record_a_components_none(trail: Trail) -> None:
    with trail.client("telegram:77") as operator, trail.client("component:monitor") as monitor:
        assert operator.note_restart("agent_runner", "stuck", "host-a")
        assert not monitor.note_restart("agent_runner", "auto-recover", "host-a")
    [noted] = trail.records(actor="telegram:77")
    assert (noted.action, noted.target, noted.reason, noted.detail) == ("restart", "agent_runner", "stuck",
                                                                        {"host": "host-a"})
    refused = httpx.post(f"{trail.api.url}/api/audit/restarts", json={"component": "nope", "reason": "x",
                                                                      "host": "h"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 422


@pytest.mark.parametrize("trail", ["sqlite"], indirect=True)  # the CLI talks to the API; the records are the store's
def test_the_cli_records_restart_and_fatal_clear_as_its_user_and_reads_the_trail(trail: Trail) -> None:
    settings = Settings(coherence_home=trail.api.home)
    with pidfiles.hold(settings, SUPERVISOR):  # this test process is the supervisor the request is for
        restarted = trail.cli("restart", "monitor", "--reason", "audit drill")
        unrecorded = trail.cli("restart", "agent_runner", "--reason", "API away", api_url=f"http://127.0.0.1:{free_port()}")
    assert restarted.returncode == 0 and restarted.stderr == "", restarted.stderr
    assert unrecorded.returncode == 0 and "not in the audit trail" in unrecorded.stderr  # the restart goes ahead
    request_file = trail.api.home / "logs" / "restart_requested.json"
    assert json.loads(request_file.read_text())["component"] == "agent_runner"
    with trail.client("component:supervisor") as supervisor:
        supervisor.report_fatal_issue(component="project_manager", reason="crash loop", detail="", recovery_tried="",
                                      host="h2")
    cleared = trail.cli("fatal", "--clear")
    assert cleared.returncode == 0, cleared.stderr
    mine = trail.records(actor=f"cli:{USER}")
    restart = next(r for r in mine if r.action == "restart")
    assert (restart.channel, restart.target, restart.reason) == ("cli", "monitor", "audit drill")
    assert [r.target for r in mine if r.action == "clear_fatal"] == ["project_manager"]

    table = trail.cli("audit", "--actor", f"cli:{USER}", "--action", "restart", "--since", "1h")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["time", "(UTC)", "actor", "channel", "action", "task/target", "before->after",
                                "reason"]
    assert len(lines) == 2 and re.search(rf"cli:{USER}\s+cli\s+restart\s+monitor\s+-\s+audit drill$", lines[1])
    as_json = trail.cli("audit", "--actor", f"cli:{USER}", "--json", "--limit", "1")
    assert json.loads(as_json.stdout)["items"][0]["action"] == "clear_fatal"  # the newest
    with pytest.raises(typer.BadParameter, match="neither a time ago"):  # a usage error: exit 2, naming --since
        since_time("yesterday-ish")
    assert since_time("2026-01-02T03:04:05") == "2026-01-02T03:04:05+00:00"  # no zone named: UTC
    refused = trail.cli("audit", "--channel", "carrier-pigeon")
    assert refused.returncode == 2 and "--channel" in refused.stderr


def test_console_sign_in_and_acts_are_recorded_as_the_console_name(trail: Trail) -> None:
    settings = Settings(coherence_home=trail.api.home)
    with httpx.Client(base_url=trail.api.url, follow_redirects=False, timeout=10) as web:
        for _ in range(2):  # a flood of wrong tokens: one record a minute per address, every one in api.log
            refused = web.post("/signin", data={"token": "not-the-token", "identity": "mallory" + "x" * 100})
            assert refused.status_code == 401
        assert web.post("/signin", data={"token": TOKEN, "identity": "alice"}).status_code == 303
        csrf = re.search(r'name="csrf" value="([A-Za-z0-9_-]+)"', web.get("/tasks").text)
        assert csrf is not None
        form = {"csrf": csrf.group(1)}
        created = web.post("/tasks", data={**form, "direction": "from the console", "task_type": "spec",
                                           "idempotency_key": "console:audit-1"})
        task_id = int(created.headers["location"].rsplit("/", 1)[1])
        web.post("/tasks", data={**form, "direction": "from the console", "task_type": "spec",
                                 "idempotency_key": "console:audit-1"})  # submitted again: no second record
        failed = _ended(trail, TaskStatus.FAILED, "fails for the console")
        assert web.post(f"/tasks/{failed}/retry", data=form).status_code == 303
        asked = _ended(trail, TaskStatus.NEEDS_DECISION, "asks the console", decision_prompt="go?")
        assert web.post(f"/tasks/{asked}/decide", data={**form, "decision": "go"}).status_code == 303
        with pidfiles.hold(settings, SUPERVISOR):
            web.post("/restart", data={**form, "component": "monitor", "reason": "from the page", "confirm": "yes"})
    [failure] = trail.records(action="sign_in_failed")
    assert failure.actor == "console:mallory" + "x" * 57 and failure.channel == "console"  # the name, capped
    assert failure.reason == "wrong token" and failure.detail == {"client": "127.0.0.1"}
    alice = [(r.action, r.task_id, r.target) for r in trail.records(actor="console:alice")]
    assert alice == [("restart", None, "monitor"), ("decide", asked, None), ("retry", failed, None),
                     ("create", task_id, None), ("sign_in", None, None)]


def test_pages_are_newest_first_stable_under_appends_and_filtered(trail: Trail) -> None:
    with trail.client("cli:pager") as pager:
        made = [pager.create_task(f"paged {n}", TaskType.SPEC).id for n in range(5)]
        first = pager.audit(actor="cli:pager", limit=2)
        assert [r.task_id for r in first.items] == [made[4], made[3]]
        pager.create_task("appended between pages", TaskType.SPEC)
        second = pager.audit(actor="cli:pager", limit=2, before_id=first.next_before_id)
        third = pager.audit(actor="cli:pager", limit=2, before_id=second.next_before_id)
        assert [r.task_id for r in second.items + third.items] == [made[2], made[1], made[0]]
        assert third.next_before_id is None
        assert [r.task_id for r in pager.audit(action="create", task_id=made[1]).items] == [made[1]]
        assert pager.audit(actor="cli:pager", channel="console").items == []
        assert pager.audit(actor="cli:pager", action="retry").items == []
        now = utcnow()
        assert pager.audit(actor="cli:pager", since=(now + timedelta(hours=1)).isoformat()).items == []
        assert len(pager.audit(actor="cli:pager", since=(now - timedelta(hours=1)).isoformat()).items) == 6
        assert pager.audit(actor="cli:pager", until=(now - timedelta(hours=1)).isoformat()).items == []


@pytest.mark.parametrize("query", [
    {"channel": "pigeon"}, {"before_id": "0"}, {"limit": "501"}, {"limit": "0"}, {"since": "yesterday"},
    {"since": "2026-01-01T00:00:00"}, {"until": "12345"}, {"actor": "a\x00b"}, {"action": "x" * 33},
    {"task_id": str(2**31)}, {"before_id": "9" * 40}, {"since": "9999-12-31T23:59:59-23:59"},
])
def test_hostile_filters_are_refused_with_422(trail: Trail, query: dict[str, str]) -> None:
    answer = httpx.get(f"{trail.api.url}/api/audit", params=query, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 422, answer.text


def test_the_trail_needs_the_token(trail: Trail) -> None:
    assert httpx.get(f"{trail.api.url}/api/audit").status_code == 401


def test_the_audit_retention_outlives_the_tasks() -> None:
    assert audit_days(None, 30) == 365 and audit_days(None, 400) == 400 and audit_days(None, 0) == 0
    assert audit_days(0, 30) == 0 and audit_days(45, 30) == 45
    with pytest.raises(ValueError, match="at least 30"):
        audit_days(10, 30)
    with pytest.raises(ValueError, match="forever"):
        audit_days(400, 0)
    assert Settings(coherence_retain_tasks_days=500).coherence_retain_audit_days == 500


def test_the_console_audit_page_pages_by_the_cursor(trail: Trail) -> None:
    with trail.client("cli:many") as many:
        made = many.create_tasks([{"direction": f"many {n}", "task_type": "spec"} for n in range(51)])
    with httpx.Client(base_url=trail.api.url, follow_redirects=False, timeout=10) as web:
        assert web.post("/signin", data={"token": TOKEN, "identity": "reader"}).status_code == 303
        first = web.get("/audit", params={"actor": "cli:many", "action": "create"})
        assert first.status_code == 200 and first.text.count("<td>create</td>") == 50
        assert f'href="/tasks/{made[-1].id}"' in first.text and f'href="/tasks/{made[0].id}"' not in first.text
        older = re.search(r'<a href="([^"]+)" rel="next">Older</a>', first.text)
        assert older is not None
        second = web.get(older.group(1).replace("&amp;", "&"))
        assert second.text.count("<td>create</td>") == 1 and f'href="/tasks/{made[0].id}"' in second.text
        assert 'rel="next">Older' not in second.text and ">Newest</a>" in second.text
        assert web.get("/audit", params={"task_id": str(2**31)}).status_code == 400
        assert web.get("/audit", params={"actor": "a\x00b"}).status_code == 400
