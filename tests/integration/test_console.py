"""The ops console over real HTTP: pages render, sessions and CSRF, no open redirect, hostile text escaped.

Each test serves the API over real HTTP; httpx plays the browser (cookies, forms, redirects not followed,
so every 303 and its Location are seen). The browser-driven flows are in tests/browser/.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from markupsafe import escape

import coherence_network.api  # noqa: F401  (first: the app imports the console's routes, not the other way round)
from coherence_network import pidfiles, restart
from coherence_network.client import ApiClient
from coherence_network.console import charts, pages
from coherence_network.console.figures import CHART_RANGES
from coherence_network.console.overview import RESTART_CONSEQUENCES
from coherence_network.console.session import COOKIE, Sessions, key_from_token, local_path
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.logfiles import REGISTRY
from coherence_network.settings import Settings
from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine, migrate
from coherence_network.store.stats import throughput
from coherence_network.supervisor import SELF as SUPERVISOR
from tests.support.api import ServedApi
from tests.support.history import insert_history

TOKEN = secrets.token_urlsafe(24)
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
PAGES = ("/", "/tasks", "/tasks?status=failed&task_type=run", "/decisions", "/graph", "/graph?q=a&ecosystem=npm",
         "/pauses")


@pytest.fixture
def open_api(tmp_path: Path) -> Iterator[ServedApi]:
    api = ServedApi(tmp_path / "home").start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    """One open API for the tests that neither count tasks nor change settings."""
    api = ServedApi(tmp_path_factory.mktemp("console-shared") / "home").start()
    yield api
    api.stop()


@pytest.fixture
def token_api(tmp_path: Path) -> Iterator[ServedApi]:
    api = ServedApi(tmp_path / "home", env={"COHERENCE_API_TOKEN": TOKEN}).start()
    yield api
    api.stop()


def browser(api: ServedApi) -> httpx.Client:
    """A cookie-keeping client that shows each redirect instead of following it."""
    return httpx.Client(base_url=api.url, follow_redirects=False, timeout=10)


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([A-Za-z0-9_-]+)"', page.text)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def needs_decision(client: ApiClient, direction: str, question: str, output: str = "") -> int:
    """A task asking a question, made the way a runner makes one: claim, then finish with needs_decision."""
    task = client.create_task(direction, TaskType.SPEC)
    claimed = client.claim("test-runner")
    assert claimed is not None and claimed.id == task.id
    client.finish(task.id, claimed.claim_token, TaskStatus.NEEDS_DECISION, decision_prompt=question, output=output)
    return task.id


def test_every_page_renders_on_an_open_console(tmp_path: Path, migrated_store_url: str) -> None:
    open_api = ServedApi(tmp_path / "home", env={"DATABASE_URL": migrated_store_url}).start()
    with ApiClient(open_api.url) as client:  # something in every list: a question, a failure, a finished task
        needs_decision(client, "ask", "Which one?")
        failed = client.create_task("fail", TaskType.RUN)
        claimed = client.claim("test-runner")
        assert claimed is not None and claimed.id == failed.id
        client.finish(failed.id, claimed.claim_token, TaskStatus.FAILED, output="boom", exit_code=1)
        client.post("/api/agent/components/heartbeat", {  # a project manager reporting its backlog
            "component": "project_manager", "host": "test", "pid": 1, "version": "0",
            "info": {"items": 4, "by_status": {"done": 3, "pending": 1}}})
    try:
        _render_every_page(open_api)
    finally:
        open_api.stop()


def _render_every_page(open_api: ServedApi) -> None:
    with browser(open_api) as web:
        for path in PAGES:
            page = web.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            assert page.headers["content-type"].startswith("text/html")
            assert "<main" in page.text and 'name="csrf"' in page.text
            policy = page.headers["content-security-policy"]  # no other site may frame a page, nothing inline runs
            assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
            assert page.headers["x-frame-options"] == "DENY"
            assert "<script>" not in page.text and " style=" not in page.text  # what the policy would block
        # NUL in a search or a name: the console's 400 page on both stores (PostgreSQL cannot even compare it)
        for path in ("/graph?q=a%00b", "/graph/npm/a%00b"):
            refused = web.get(path)
            assert refused.status_code == 400 and refused.headers["content-type"].startswith("text/html"), path
            assert "x-frame-options" in refused.headers
        assert COOKIE in web.cookies  # an open console hands out a session on sight (for the CSRF token)
        overview = web.get("/").text
        for layer in ("Goal", "Orchestration", "Tasks", "Attention"):
            assert f">{layer}</h2>" in overview
        assert "Backlog: 3 of 4 items done" in overview
        assert overview.count("<svg") == 3


def test_a_missing_task_or_project_is_a_404_page(shared_api: ServedApi) -> None:
    with browser(shared_api) as web:
        for path, words in (("/tasks/424242", "task 424242 not found"), ("/graph/npm/nothing-here", "not indexed")):
            page = web.get(path)
            assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
            assert words in page.text and "Traceback" not in page.text
        # beyond what the store holds: the JSON API's id rule, not a server error
        assert web.get("/tasks/99999999999999999999").status_code == 422


def test_hostile_task_text_is_escaped_everywhere(shared_api: ServedApi) -> None:
    with ApiClient(shared_api.url) as client:
        task_id = needs_decision(client, HOSTILE, HOSTILE, output=HOSTILE)
    with browser(shared_api) as web:
        for path in (f"/tasks/{task_id}", "/tasks", "/decisions", "/"):
            text = web.get(path).text
            assert HOSTILE not in text and "<script>alert" not in text, path
        assert str(escape(HOSTILE)) in web.get(f"/tasks/{task_id}").text


def test_forms_without_their_csrf_token_are_refused(open_api: ServedApi) -> None:
    with ApiClient(open_api.url) as client, browser(open_api) as web:
        token = csrf_of(web.get("/tasks"))
        task = {"direction": "from the console", "task_type": "run", "command": "echo hi"}
        for forged in ({}, {"csrf": "0" * 64}, {"csrf": "é" * 64}):  # non-ASCII: refused, not a server error
            refused = web.post("/tasks", data={**task, **forged})
            assert refused.status_code == 403 and "CSRF" in refused.text
        assert client.count_tasks().total == 0
        with browser(open_api) as stranger:  # no session at all: nothing to check a token against
            assert stranger.post("/tasks", data={**task, "csrf": token}).status_code == 403
        created = web.post("/tasks", data={**task, "csrf": token})
        assert created.status_code == 303
        task_id = int(created.headers["location"].rsplit("/", 1)[1])
        assert client.get_task(task_id).direction == "from the console"


def test_submitting_the_create_form_again_makes_no_second_task(open_api: ServedApi) -> None:
    with ApiClient(open_api.url) as client, browser(open_api) as web:
        form = web.get("/tasks").text
        key = re.search(r'name="idempotency_key" value="([^"]+)"', form)
        assert key, "the create form carries no idempotency key"
        fields = {"csrf": csrf_of(web.get("/tasks")), "idempotency_key": key.group(1), "direction": "once",
                  "task_type": "run", "command": "true"}
        first, again = web.post("/tasks", data=fields), web.post("/tasks", data=fields)  # a reload, a double click
        assert first.status_code == again.status_code == 303 and first.headers["location"] == again.headers["location"]
        assert client.count_tasks().total == 1
        assert key.group(1) not in web.get("/tasks").text  # each rendered form has its own key
        other = web.post("/tasks", data={**fields, "direction": "something else"})  # the key with another task
        assert other.status_code == 409 and client.count_tasks().total == 1


def test_answering_through_the_form_uses_the_api_contract(open_api: ServedApi) -> None:
    with ApiClient(open_api.url) as client, browser(open_api) as web:
        task_id = needs_decision(client, "ship it?", "Ship it?")
        token = csrf_of(web.get("/decisions"))
        answered = web.post(f"/tasks/{task_id}/decide", data={"csrf": token, "decision": "yes", "back": "/decisions"})
        assert answered.status_code == 303 and answered.headers["location"] == "/decisions"
        task = client.get_task(task_id)
        assert (task.status, task.decision, task.decided_by) == (TaskStatus.PENDING, "yes", "console:operator")
        again = web.post(f"/tasks/{task_id}/decide", data={"csrf": token, "decision": "no"})
        assert again.status_code == 409
        assert f"cannot decide task {task_id}: its status is pending, decide needs needs_decision" in again.text
        assert f'<a href="/tasks/{task_id}">Back to task #{task_id}</a>' in again.text  # the way back
        retried = web.post(f"/tasks/{task_id}/retry", data={"csrf": token})
        assert retried.status_code == 409 and "retry needs failed" in retried.text
        empty = web.post("/tasks", data={"csrf": token, "direction": "", "task_type": "nonsense"})
        assert empty.status_code == 422 and "task_type" in empty.text and "Traceback" not in empty.text


def test_pause_forms_need_a_scope_and_a_reason_and_say_what_they_did(open_api: ServedApi) -> None:
    """The console's pause and resume go through the API's request models (a reason is required, 422 without) and
    its pause_scope/resume_scope: the same pause as `coherence pause`, with the actor console:<name>."""
    with ApiClient(open_api.url) as client, browser(open_api) as web:
        token = csrf_of(web.get("/pauses"))
        assert web.post("/pauses", data={"scope": "impl", "reason": "x"}).status_code == 403  # no CSRF token
        for refused, code, said in (({"scope": "impl", "reason": "  "}, 422, "reason"),
                                    ({"scope": "nonsense", "reason": "why"}, 400, "Choose what to pause"),
                                    ({"reason": "why"}, 400, "Choose what to pause")):
            answer = web.post("/pauses", data={"csrf": token, **refused})
            assert answer.status_code == code and said in answer.text and "Traceback" not in answer.text, refused
        assert client.pauses().pauses == []
        done = web.post("/pauses", data={"csrf": token, "scope": "all", "reason": "maintenance <b>window</b>"})
        assert done.status_code == 303 and done.headers["location"] == "/pauses?notice=paused"
        again = web.post("/pauses", data={"csrf": token, "scope": "all", "reason": "another reason"})
        assert again.headers["location"] == "/pauses?notice=kept"
        [held] = client.pauses().pauses
        assert (held.scope, held.by, held.reason) == ("all", "console:operator", "maintenance <b>window</b>")
        overview = web.get("/").text
        assert "maintenance &lt;b&gt;window&lt;/b&gt;" in overview and 'action="/pauses/all/resume"' in overview
        assert web.post("/pauses/all/resume", data={"csrf": ""}).status_code == 403
        assert web.post("/pauses/nonsense/resume", data={"csrf": token}).status_code == 404
        resumed = web.post("/pauses/all/resume", data={"csrf": token})
        assert resumed.headers["location"] == "/pauses?notice=resumed" and client.pauses().pauses == []
        assert "Nothing is paused." in web.get(resumed.headers["location"]).text
        assert web.post("/pauses/all/resume", data={"csrf": token}).headers["location"] == "/pauses?notice=not-paused"


def test_restart_without_a_supervisor_writes_nothing_and_says_so(open_api: ServedApi) -> None:
    with browser(open_api) as web:
        token = csrf_of(web.get("/"))
        asked = web.post("/restart", data={"csrf": token, "component": "agent_runner", "reason": "test",
                                           "confirm": "yes"})
        assert asked.status_code == 303
        assert "No supervisor runs" in web.get(asked.headers["location"]).text
        assert not (open_api.home / "logs" / "restart_requested.json").exists()
        for component in ("nope", ""):  # the form has no default: a post without a choice names the choices
            refused = web.post("/restart", data={"csrf": token, "component": component, "confirm": "yes"})
            assert refused.status_code == 400 and "Choose a component to restart: one of api," in refused.text


def test_restart_asks_the_supervisor_like_coherence_restart(open_api: ServedApi) -> None:
    settings = Settings(coherence_home=open_api.home)
    request_file = REGISTRY["restart_requested.json"].path(settings)
    with browser(open_api) as web, pidfiles.hold(settings, SUPERVISOR):  # this test process holds its lock
        overview = web.get("/").text
        assert '<option value="" selected disabled>choose one</option>' in overview  # no component by default
        token = csrf_of(web.get("/"))
        first = web.post("/restart", data={"csrf": token, "component": "agent_runner", "reason": "stuck"})
        assert first.status_code == 200 and not request_file.exists()  # a page that asks, nothing written
        assert "<h1>Restart agent_runner?</h1>" in first.text and RESTART_CONSEQUENCES["agent_runner"] in first.text
        confirm = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', first.text))
        assert confirm == {"csrf": token, "component": "agent_runner", "reason": "stuck", "confirm": "yes"}
        asked = web.post("/restart", data=confirm)  # the confirmation page's own form, as a browser posts it
        assert asked.status_code == 303
        assert "Restart requested" in web.get(asked.headers["location"]).text
    request = json.loads(REGISTRY["restart_requested.json"].path(settings).read_text())
    assert request["component"] == "agent_runner" and request["reason"] == "console:operator: stuck"


def test_with_a_token_pages_need_a_session(token_api: ServedApi) -> None:
    with browser(token_api) as web:
        for path in PAGES:
            sent = web.get(path)
            assert sent.status_code == 303, path
            assert sent.headers["location"] == "/signin?" + httpx.QueryParams({"next": path}).__str__()
        assert web.get("/signin").status_code == 200
        expired = web.post("/tasks/7/decide", data={"decision": "x"}, headers={"Referer": f"{token_api.url}/tasks/7"})
        assert expired.status_code == 303 and expired.headers["location"] == "/signin?next=%2Ftasks%2F7"
        elsewhere = web.post("/tasks", data={"direction": "x"}, headers={"Referer": "http://evil.example/tasks"})
        assert elsewhere.headers["location"] == "/signin?next=%2F"
        assert web.get("/api/agent/tasks").status_code == 401


def test_a_forged_cookie_with_non_ascii_bytes_is_no_session(token_api: ServedApi) -> None:
    """A cookie header arrives as latin-1 text: its signature is compared as bytes, never as a str that
    hmac.compare_digest refuses (a 500 before)."""
    forged = {"Cookie": f"{COOKIE}=eyJ3aG8iOiJ4In0.{'é' * 64}".encode("latin-1")}
    assert httpx.get(f"{token_api.url}/api/agent/tasks", headers=forged).status_code == 401
    assert httpx.get(f"{token_api.url}/tasks", headers=forged).status_code == 303
    wrong = httpx.post(f"{token_api.url}/signin", data={"token": "é" * 20})
    assert wrong.status_code == 401


def test_a_wrong_token_is_refused_without_a_cookie(token_api: ServedApi) -> None:
    with browser(token_api) as web:
        refused = web.post("/signin", data={"token": "not-the-token-at-all", "next": "/tasks"})
        assert refused.status_code == 401 and "not the API token" in refused.text
        assert "set-cookie" not in refused.headers and COOKIE not in web.cookies
        assert web.get("/tasks").status_code == 303
    log = (token_api.home / "logs" / "api.log").read_text()
    assert "console sign-in refused" in log and TOKEN not in log


def test_a_sign_in_posted_from_another_site_is_refused(shared_api: ServedApi) -> None:
    with browser(shared_api) as web:
        foreign = web.post("/signin", data={"identity": "mallory"}, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403 and COOKIE not in web.cookies
        own = web.post("/signin", data={"identity": "alice"}, headers={"Origin": shared_api.url})
        assert own.status_code == 303 and COOKIE in web.cookies
        assert "alice" in web.get("/").text


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x",
                                    "/%0d%0aSet-Cookie:x=1"])
def test_sign_in_never_redirects_off_the_site(token_api: ServedApi, target: str) -> None:
    with browser(token_api) as web:
        signed = web.post("/signin", data={"token": TOKEN, "next": target})
        assert signed.status_code == 303
        assert signed.headers["location"] == "/"


def test_a_session_signs_in_pages_and_json_reads_but_not_api_writes(token_api: ServedApi) -> None:
    with browser(token_api) as web:
        signed = web.post("/signin", data={"token": TOKEN, "identity": "alice", "next": "/decisions?offset=0"})
        assert signed.status_code == 303 and signed.headers["location"] == "/decisions?offset=0"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=" in cookie
        page = web.get("/decisions")
        assert page.status_code == 200 and "alice" in page.text
        assert web.get("/api/agent/tasks").status_code == 200  # what the console's JavaScript polls
        assert web.post("/api/agent/tasks", json={"direction": "x", "task_type": "run"}).status_code == 401
        token = csrf_of(page)
        created = web.post("/tasks", data={"csrf": token, "direction": "by alice", "task_type": "run",
                                           "command": "echo hi"})
        assert created.status_code == 303
        out = web.post("/signout", data={"csrf": token})
        assert out.status_code == 303 and COOKIE not in web.cookies
        assert web.get("/").status_code == 303
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{token_api.url}/api/agent/tasks", headers=headers).json()["total"] == 1  # bearer as before


def test_the_host_allow_list_covers_the_console(shared_api: ServedApi) -> None:
    refused = httpx.get(f"{shared_api.url}/", headers={"Host": "rebound.example"})
    assert refused.status_code == 421


def test_a_rotated_token_signs_everyone_out() -> None:
    old = Sessions(key_from_token("a" * 20), 3600)
    cookie = old.issue("alice")
    assert old.verify(cookie) is not None
    assert Sessions(key_from_token("b" * 20), 3600).verify(cookie) is None
    assert old.verify(cookie, now=10**12) is None  # expired
    assert old.verify(cookie.replace(cookie[0], "X" if cookie[0] != "X" else "Y", 1)) is None  # tampered


@pytest.mark.parametrize("target,expected", [("/tasks?status=failed", "/tasks?status=failed"), ("//x", "/"),
                                             ("http://x/", "/"), ("/\\x", "/"), ("", "/"), ("tasks", "/")])
def test_local_path(target: str, expected: str) -> None:
    assert local_path(target) == expected


def test_charts_escape_their_text_and_scale_to_the_data() -> None:
    rows = [{"hour": HOSTILE, "completed": 7, "failed": 3}, {"hour": "x", "completed": 0, "failed": 0}]
    bars = str(charts.stacked_bars(rows, "hour", ("completed", "failed"), HOSTILE))
    counts = str(charts.horizontal_bars({HOSTILE: 4, "running": 0}, "queue"))
    rates = str(charts.rate_bars([{"day": HOSTILE, "completed": 1, "failed": 3, "success_rate": 0.25}], "rate"))
    for svg in (bars, counts, rates):
        assert svg.startswith("<svg") and "<script" not in svg and "<img" not in svg
    assert ">10<" in bars  # the axis top: the tallest stack (7 + 3), a round number
    assert "7 completed, 3 failed over 2 bars" in bars  # the description screen readers get
    assert ">25%<" in rates


def test_every_restart_target_has_its_consequence_said() -> None:
    assert set(RESTART_CONSEQUENCES) == set(restart.TARGETS)


def test_unknown_console_urls_answer_a_browser_with_an_html_page(shared_api: ServedApi) -> None:
    """A browser gets the console's page (404 with a way home, 405 with Allow); a JSON client and every /api/ path
    keep JSON."""
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    with browser(shared_api) as web:
        for path in ("/nope", "/tasks/7/nope", "/console-static/nope.js"):
            page = web.get(path, headers=html)
            assert page.status_code == 404 and page.headers["content-type"].startswith("text/html"), path
            assert "<h1>Page not found</h1>" in page.text and '<a href="/">Overview</a>' in page.text
            assert page.headers["x-frame-options"] == "DENY"  # the console's headers
        assert web.get("/nope").json() == {"detail": "Not Found"}  # no text/html asked for
        assert web.get("/api/nope", headers=html).json() == {"detail": "Not Found"}
        wrong = web.put("/tasks", headers=html)
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, POST"
        assert "<h1>Method not allowed</h1>" in wrong.text and "it answers GET, POST" in wrong.text
        api_wrong = web.put("/api/health", headers=html)
        assert api_wrong.status_code == 405 and api_wrong.headers["content-type"] == "application/json"


def test_times_are_utc_labelled_for_the_script_to_localize(shared_api: ServedApi) -> None:
    with browser(shared_api) as web:
        page = web.get("/").text  # "as of <time>"
    found = re.search(r'<time datetime="(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)" title="([^"]+)">([^<]+)</time>', page)
    assert found, "no UTC time element"
    stamp, title, text = found.groups()
    assert title == text == stamp.replace("T", " ").replace("Z", " UTC")


def test_the_create_form_defaults_to_run_and_says_what_agent_types_need(shared_api: ServedApi) -> None:
    with browser(shared_api) as web:  # this API has no COHERENCE_AGENT_COMMAND
        form = web.get("/tasks").text
    assert '<option value="run" selected>run</option>' in form
    assert '<option value="spec">spec (runs the agent: COHERENCE_AGENT_COMMAND is not set here)</option>' in form


def test_the_throughput_chart_has_a_range(shared_api: ServedApi) -> None:
    with browser(shared_api) as web:
        for name, title in (("24h", "per hour, last 24 h"), ("7d", "per 6 hours, last 7 days"),
                            ("30d", "per day, last 30 days")):
            page = web.get(f"/?range={name}")
            assert page.status_code == 200 and f"<title>Tasks finished {title}</title>" in page.text
            assert f'<a href="/?range={name}" aria-current="true">' in page.text
        assert "<title>Tasks finished per hour, last 24 h</title>" in web.get("/").text  # the default
        for bad in ("1y", "", "24H"):
            refused = web.get("/", params={"range": bad})
            assert refused.status_code == 400 and refused.headers["content-type"].startswith("text/html"), bad
            assert "range must be one of 24h, 7d, 30d" in refused.text


def test_throughput_buckets_follow_the_range(migrated_store_url: str) -> None:
    """Finished tasks land in the bucket of their UTC hour, 6 hours or day; one outside the span is not counted."""
    engine = create_store_engine(migrated_store_url)
    migrate(engine)
    now = datetime(2026, 12, 3, 15, 30, tzinfo=UTC)
    finished = [(now - timedelta(hours=1), "completed"), (now - timedelta(days=2), "failed"),
                (now - timedelta(days=20), "completed"), (now - timedelta(days=40), "completed")]
    with engine.begin() as conn:
        insert_history(conn, [{"direction": "d", "task_type": "run", "status": status, "created_at": at,
                               "updated_at": at, "started_at": at, "finished_at": at} for at, status in finished])
    try:
        with engine.connect() as conn:
            day = throughput(conn, now, timedelta(hours=1), 24)
            week = throughput(conn, now, timedelta(hours=6), 28)
            month = throughput(conn, now, timedelta(days=1), 30)
        store = TaskStore(engine)  # the overview's
        charted = [store.throughput(now, CHART_RANGES[name].bucket, CHART_RANGES[name].count)
                   for name in ("24h", "7d", "30d")]
        assert charted == [day, week, month]
        assert store.throughput(now + timedelta(hours=1), timedelta(hours=1), 24)[-3]["completed"] == 1  # moved on
    finally:
        engine.dispose()
    assert len(day) == 24 and day[-1]["start"] == "2026-12-03T15:00:00Z" and day[-2]["completed"] == 1
    assert (sum(b["completed"] for b in day), sum(b["failed"] for b in day)) == (1, 0)
    assert len(week) == 28 and (week[0]["start"], week[-1]["start"]) == ("2026-11-26T18:00:00Z", "2026-12-03T12:00:00Z")
    assert {b["start"]: b["failed"] for b in week}["2026-12-01T12:00:00Z"] == 1
    assert (sum(b["completed"] for b in week), sum(b["failed"] for b in week)) == (1, 1)
    assert len(month) == 30 and month[-1]["start"] == "2026-12-03T00:00:00Z"
    assert {b["start"]: b["completed"] for b in month}["2026-11-13T00:00:00Z"] == 1
    assert (sum(b["completed"] for b in month), sum(b["failed"] for b in month)) == (2, 1)


def test_a_flag_with_a_command_shows_it_to_copy_next_to_its_console_page() -> None:
    """Flags carry `command` (to paste) and `console` (the console's own page) once the health rules give them; a flag
    without them renders as before."""
    advice = pages._TEMPLATES.get_template("_macros.html").module.advice
    shown = str(advice({"rule": "needs_decision", "command": f"coherence decide 12 {HOSTILE}",
                        "console": "/decisions"}))
    assert '<code class="command">coherence decide 12 &lt;script&gt;' in shown
    assert '<a class="button" href="/decisions">Open in the console</a>' in shown
    assert "<a " not in str(advice({"command": "coherence fatal --clear", "console": None}))
    assert str(advice({"rule": "stale_runner"})).strip() == ""
