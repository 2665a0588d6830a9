"""The console in a real browser (Playwright driving Debian's chromium) against a real API, a real runner and SQLite.

An operator's flows end to end: answer a question on Decisions and see the task complete with the answer, who gave
it and the log; retry a failed task from its page; watch a running task's log grow without a reload; find a project
and its dependents; see the console say it is blind while the API (or its PostgreSQL store) is gone and recover by
itself; restart a component through its confirmation page without JavaScript; pause a task type with a reason
and resume it; choose the chart's range; read times in the browser's zone; the dark theme and the focus ring's
contrast; the HTML 404 page; and, with a token, be sent to sign in, be refused a wrong token and a form without its
CSRF token. Each page is photographed at 1280 px (the overview at 390 px and in the dark theme too): into the
folder SCREENSHOTS_DIR names (`make screenshots` sets docs/console/, the README's pictures), else into a temporary
folder, so a test run leaves the checkout unchanged.
Every request the browser makes to anything but loopback is refused, so no test depends on the internet.
it and the log; retry a failed task from its page; cancel a running one after a confirmation; watch a running task's
log grow without a reload; find a project and its dependents; see the console say it is blind while the API (or its
PostgreSQL store) is gone and recover by itself; restart a component through its confirmation page without
JavaScript; choose the chart's range; read times in the browser's zone; the dark theme and the focus ring's
contrast; the HTML 404 page; and, with a token, be sent to sign in, be refused a wrong token and a form without its
CSRF token. Each page is photographed at 1280 px (the overview at 390 px and in the dark theme too): into the folder
SCREENSHOTS_DIR names (`make screenshots` sets docs/console/, the README's pictures), else into a temporary folder,
so a test run leaves the checkout unchanged. Every request the browser makes to anything but loopback is refused, so
no test depends on the internet.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect, sync_playwright

from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.store.graph import Dependency, GraphStore, PackageRecord
from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.postgres import PostgresServer
from tests.support.required import missing
from tests.support.runner import RunnerProcess, group_gone, task_group

pytestmark = pytest.mark.long  # a minute or more in all: started first (tests/conftest.py)

REFRESH_MS = 5_000  # how often the overview and the lists read themselves again
LEASE = 6.0  # the runner renews every LEASE / 3 s, which is when it learns of a cancel
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
SHOTS = Path(os.environ.get("SCREENSHOTS_DIR") or Path(tempfile.gettempdir()) / "coherence-console-shots")
TOKEN = "browser-test-token-0123456789"
PY = sys.executable
AGENT = """
import os, sys
print("prompt: " + open(sys.argv[1]).read().replace("\\n", " | "))
decision = os.environ.get("COHERENCE_DECISION")
print("env decision: " + decision if decision else "NEEDS_DECISION: Ship version 2 to everyone?")
"""
FAILS_ONCE = """
import os, sys
if not os.path.exists(sys.argv[1]):
    open(sys.argv[1], "w").close()
    print("first attempt: the database is not there yet")
    sys.exit(3)
print("second attempt: done")
"""
TICKS = """
import os, sys, time
n = 0
while not os.path.exists(sys.argv[1]):
    n += 1
    print(f"tick {n}", flush=True)
    time.sleep(0.3)
print("stopped")
"""

def _chromium() -> str:
    """Debian's chromium; in CI its absence is a failure, not a skip (like the PostgreSQL fixture)."""
    found = shutil.which("chromium")
    if found is None:
        missing("chromium not found (apt-get install chromium)")
    return str(found)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=_chromium())
        yield launched
        launched.close()


def _program(folder: Path, name: str, code: str) -> Path:
    path = folder / name
    path.write_text(code)
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedApi, ApiClient, Path]]:
    """An open API on SQLite and one runner whose agent asks a question until it has an answer."""
    folder = tmp_path_factory.mktemp("console")
    api = ServedApi(folder / "home", env={"COHERENCE_LEASE_SECONDS": str(LEASE)}).start()
    agent = _program(folder, "agent.py", AGENT)
    runner = RunnerProcess(api.home, api.url, env={"COHERENCE_AGENT_COMMAND": f"{PY} {agent} {{prompt_file}}",
                                                   "AGENT_KILL_GRACE_SECONDS": "1"}).start()
    client = ApiClient(api.url, retries=0)
    try:
        yield api, client, folder
    finally:
        client.close()
        runner.stop()
        api.stop()


def new_context(browser: Any, base_url: str, **options: Any) -> Any:
    """A browser context on ``base_url`` that refuses every request leaving loopback."""
    context = browser.new_context(base_url=base_url, **{"viewport": {"width": 1280, "height": 900}, **options})
    context.route("**/*", lambda route: route.continue_() if urlsplit(route.request.url).hostname in LOOPBACK
                  else route.abort("blockedbyclient"))
    return context


@pytest.fixture
def page(browser: Any, pipeline: tuple[ServedApi, ApiClient, Path]) -> Iterator[Any]:
    context = new_context(browser, pipeline[0].url)
    opened = context.new_page()
    yield opened
    context.close()


def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _status(client: ApiClient, task_id: int, *wanted: TaskStatus) -> bool:
    return client.get_task(task_id).status in wanted


def test_a_question_is_answered_on_decisions_and_the_task_completes(page: Any, pipeline: Any) -> None:
    api, client, _ = pipeline
    page.goto("/signin")
    page.get_by_label("Your name").fill("alice")
    page.get_by_role("button", name="Sign in").click()
    task = client.create_task("Decide whether to ship version 2", TaskType.SPEC)
    wait_until(lambda: _status(client, task.id, TaskStatus.NEEDS_DECISION), 60, "the agent's question")
    page.get_by_role("link", name="Decisions").click()
    question = page.get_by_role("article").filter(has_text=f"Task #{task.id}")
    expect(question).to_contain_text("Ship version 2 to everyone?")
    shoot(page, "decisions")
    question.get_by_label(f"Answer for task #{task.id}").fill("yes, ship it")
    question.get_by_role("button", name="Send answer").click()
    expect(page).to_have_url(re.compile(r"/decisions$"))
    wait_until(lambda: _status(client, task.id, TaskStatus.COMPLETED), 60, "the answered task to complete")
    page.goto(f"/tasks/{task.id}")
    trail = page.locator("table.trail")
    expect(trail).to_contain_text("yes, ship it")
    expect(trail).to_contain_text("console:alice")
    expect(page.locator("#log-text")).to_contain_text("env decision: yes, ship it")
    shoot(page, "task")


def test_a_failed_task_is_retried_from_its_page(page: Any, pipeline: Any) -> None:
    api, client, folder = pipeline
    script = _program(folder, "fails_once.py", FAILS_ONCE)
    # one attempt: a nonzero exit is retried on its own otherwise, and this is the operator's retry
    task = client.create_task("Migrate the database", TaskType.RUN, command=f"{PY} {script} {folder / 'marker'}",
                              max_attempts=1)
    wait_until(lambda: _status(client, task.id, TaskStatus.FAILED), 60, "the first attempt to fail")
    page.goto(f"/tasks?status={TaskStatus.FAILED}")
    page.get_by_role("link", name=f"#{task.id}").click()
    expect(page.locator("#log-text")).to_contain_text("the database is not there yet")
    page.get_by_role("button", name="Retry this task").click()
    wait_until(lambda: _status(client, task.id, TaskStatus.COMPLETED), 60, "the retried task to complete")
    page.reload()
    expect(page.locator("h1")).to_contain_text("completed")
    expect(page.locator("#log-text")).to_contain_text("second attempt: done")


def test_retry_all_matching_shows_the_count_and_acts_only_once_confirmed(page: Any, pipeline: Any) -> None:
    api, client, folder = pipeline
    script = _program(folder, "fails_once.py", FAILS_ONCE)
    ids = [client.create_task(f"Load shard {n} (bulkdrill)", TaskType.RUN, max_attempts=1,
                              command=f"{PY} {script} {folder / f'shard-{n}'}").id for n in range(3)]
    wait_until(lambda: all(_status(client, i, TaskStatus.FAILED) for i in ids), 60, "every shard to fail once")
    page.goto(f"/tasks?status={TaskStatus.FAILED}&q=bulkdrill")
    page.get_by_role("button", name="Retry all matching…").click()
    expect(page.locator("#bulk-count")).to_contain_text("Retry would take 3 tasks now")
    assert all(_status(client, i, TaskStatus.FAILED) for i in ids)  # the preview moved nothing
    page.get_by_label("Reason (kept in each task's audit record)").fill("the shards' database is there now")
    shoot(page, "bulk-retry")
    page.get_by_role("button", name="Confirm: retry 3 tasks").click()
    expect(page.locator("#bulk-result")).to_contain_text("Retried 3 of the 3 tasks previewed")
    wait_until(lambda: all(_status(client, i, TaskStatus.COMPLETED) for i in ids), 60, "the retried shards")
def test_a_running_task_is_cancelled_from_its_page_after_a_confirmation(page: Any, pipeline: Any) -> None:
    api, client, _ = pipeline
    task = client.create_task("Sleep by mistake", TaskType.RUN, command="sleep 300")
    wait_until(lambda: task_group(api.home, task.id) is not None, 60, "the task to run")
    pgid = task_group(api.home, task.id)
    assert pgid is not None
    page.goto("/signin")
    page.get_by_label("Your name").fill("carol")
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"/tasks/{task.id}")
    confirm = page.get_by_role("button", name=f"Confirm: cancel task #{task.id}")
    expect(confirm).to_be_hidden()  # asked only once the operator opened the confirmation
    page.get_by_text("Cancel this task").click()
    page.get_by_label(f"Why cancel task #{task.id}?").fill("sleeping by mistake")
    confirm.click()
    expect(page.locator("#cancel-requested")).to_contain_text("console:carol")
    wait_until(lambda: group_gone(pgid), LEASE / 3 + 5, "the task's process group to be gone")
    wait_until(lambda: _status(client, task.id, TaskStatus.CANCELLED), 30, "the task to be cancelled")
    page.reload()
    expect(page.locator("h1")).to_contain_text("cancelled")
    expect(page.get_by_role("button", name="Retry this task")).to_be_visible()
    done = client.get_task(task.id)
    assert (done.cancelled_by, done.cancel_reason) == ("console:carol", "sleeping by mistake")


def test_a_running_tasks_log_grows_without_a_reload(page: Any, pipeline: Any) -> None:
    api, client, folder = pipeline
    script = _program(folder, "ticks.py", TICKS)
    stop = folder / "stop-ticking"
    task = client.create_task("Count slowly", TaskType.RUN, command=f"{PY} {script} {stop}")
    try:
        wait_until(lambda: _status(client, task.id, TaskStatus.RUNNING), 60, "the task to run")
        page.goto(f"/tasks/{task.id}")
        page.evaluate("window.sameDocument = true")  # gone if the page were loaded again
        expect(page.locator("#log-text")).to_contain_text("tick 3", timeout=30_000)
        expect(page.locator("#log-text")).to_contain_text("tick 8", timeout=30_000)
        assert page.evaluate("window.sameDocument") is True
        shoot(page, "task-running")
    finally:
        stop.touch()
    wait_until(lambda: _status(client, task.id, TaskStatus.COMPLETED), 60, "the task to stop")
    expect(page.locator("h1")).to_contain_text("completed", timeout=30_000)  # status followed too
    assert page.evaluate("window.sameDocument") is True


def test_the_graph_search_finds_a_project_and_its_dependents(page: Any, pipeline: Any) -> None:
    api, _, _ = pipeline
    engine = sa.create_engine(f"sqlite:///{api.home / 'coherence.db'}")
    try:
        GraphStore(engine).save_batch("npm", [
            (PackageRecord("left-pad", "ok", version="1.3.0", description="String left pad"), 1),
            (PackageRecord("report-builder", "ok", version="2.0.0",
                           dependencies=[Dependency("left-pad", "^1.3.0", "runtime")]), 0),
            (PackageRecord("cli-table", "ok", version="0.3.1",
                           dependencies=[Dependency("left-pad", "~1.2", "dev")]), 0),
        ])
    finally:
        engine.dispose()
    page.goto("/graph")
    page.get_by_label("Project name contains").fill("left")
    page.get_by_label("Ecosystem").select_option("npm")
    page.get_by_role("button", name="Search").click()
    shoot(page, "graph")
    page.get_by_role("link", name="left-pad", exact=True).click()
    expect(page.locator("h1")).to_contain_text("left-pad")
    dependents = page.locator("section", has=page.locator("#dependents"))
    expect(dependents).to_contain_text("report-builder")
    expect(dependents).to_contain_text("cli-table")
    shoot(page, "project")


def test_overview_and_task_list_pictures(page: Any, pipeline: Any) -> None:
    """Runs after the flows above, so the charts and lists have something to show; one more question waits and
    one more task fails, so the pictures show the attention flags and a failure too. The task list is open while
    they are made: it shows them by itself, without a reload."""
    _, client, _ = pipeline
    page.goto("/tasks")
    page.evaluate("window.sameDocument = true")  # gone if the page were loaded again
    asks = client.create_task("Choose a licence for the new package", TaskType.SPEC)
    fails = client.create_task("Build the docs", TaskType.RUN, command=f"{PY} -c \"raise SystemExit('no sphinx')\"")
    wait_until(lambda: _status(client, asks.id, TaskStatus.NEEDS_DECISION), 60, "the question")
    wait_until(lambda: _status(client, fails.id, TaskStatus.FAILED), 60, "the failure")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"#{fails.id}", exact=True))
    expect(row).to_contain_text("failed", timeout=REFRESH_MS + 5_000)
    assert page.evaluate("window.sameDocument") is True
    shoot(page, "tasks")
    page.goto("/")
    for layer in ("Goal", "Orchestration", "Tasks", "Attention"):
        expect(page.get_by_role("heading", name=layer, exact=True)).to_be_visible()
    headings = page.locator("main h2").all_inner_texts()
    assert headings[0] == "Attention", headings  # what needs a person comes first
    expect(page.locator("svg.chart")).to_have_count(3)
    expect(page.locator("svg.chart rect.s-rate")).to_have_count(1)  # today's success rate, counted just now
    expect(page.locator("svg.chart rect.s-failed")).to_have_count(1)  # this hour's failure on its bar
    shoot(page, "overview")
    page.set_viewport_size({"width": 390, "height": 844})
    attention = page.get_by_role("heading", name="Attention", exact=True).bounding_box()
    assert attention is not None and attention["y"] < 844, attention  # on the first screen of a phone
    shoot(page, "overview-390")
    page.emulate_media(color_scheme="dark")
    shoot(page, "overview-dark-390")
    page.set_viewport_size({"width": 1280, "height": 900})
    shoot(page, "overview-dark")


# The contrast ratio of WCAG 2 between the focus ring and the background around the focused element (the first
# ancestor with a background colour), both from getComputedStyle.
FOCUS_CONTRAST = """element => {
  const rgb = (text) => text.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const luminance = (c) => {
    const [r, g, b] = c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  let around = element.parentElement;
  while (around && getComputedStyle(around).backgroundColor.match(/rgba\\(.*, 0\\)$|transparent/)) {
    around = around.parentElement;
  }
  const ring = getComputedStyle(element).outlineColor, background = getComputedStyle(around).backgroundColor;
  const [a, b] = [luminance(rgb(ring)), luminance(rgb(background))].sort((x, y) => y - x);
  return {ratio: (a + 0.05) / (b + 0.05), ring, background, width: getComputedStyle(element).outlineWidth,
          body: getComputedStyle(document.body).backgroundColor};
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_theme_follows_the_system_and_the_focus_ring_stands_out(browser: Any, pipeline: Any, scheme: str) -> None:
    context = new_context(browser, pipeline[0].url, color_scheme=scheme)
    page = context.new_page()
    try:
        page.goto("/tasks")
        page.keyboard.press("Tab")  # the skip link, over the page's background
        skip = page.get_by_role("link", name="Skip to content")
        expect(skip).to_be_focused()
        on_page = skip.evaluate(FOCUS_CONTRAST)
        field = page.locator("main form.card select").first  # a field on a card
        field.focus()  # after a key press, so :focus-visible holds
        on_card = field.evaluate(FOCUS_CONTRAST)
    finally:
        context.close()
    body = [int(v) for v in re.findall(r"\d+", on_page["body"])[:3]]
    assert (sum(body) / 3 < 60) if scheme == "dark" else (sum(body) / 3 > 200), on_page  # dark or light page
    for measured in (on_page, on_card):
        assert measured["width"] == "3px" and measured["ratio"] >= 3, measured


def test_the_console_says_when_the_api_is_gone_and_recovers_by_itself(page: Any, pipeline: Any) -> None:
    """Within one refresh of the API going away: a banner with the last good time, the page greyed and labelled
    stale; within one refresh of the API being back (same port, same COHERENCE_HOME): banner gone, data fresh."""
    api = pipeline[0]
    page.goto("/")
    as_of = page.locator("h1 time").get_attribute("datetime")
    banner = page.locator("#blind")
    expect(banner).to_be_hidden()
    api.stop()
    try:
        expect(banner).to_be_visible(timeout=REFRESH_MS + 5_000)
        expect(banner).to_have_attribute("role", "alert")
        expect(banner).to_contain_text("The API cannot be reached.")
        expect(banner).to_contain_text("This page is stale: last good data from")
        assert banner.locator("time").get_attribute("title").endswith(" UTC")
        expect(page.locator("main")).to_have_class(re.compile(r"\bstale\b"))
        expect(page.locator("main .stale-label")).to_have_text("stale")
        shoot(page, "overview-blind")
    finally:
        api.start()
    expect(banner).to_be_hidden(timeout=REFRESH_MS + 5_000)
    expect(page.locator("main")).not_to_have_class(re.compile(r"\bstale\b"))
    expect(page.locator("main .stale-label")).to_have_count(0)
    assert page.locator("h1 time").get_attribute("datetime") != as_of  # read again, not just unmarked


def test_the_console_says_when_the_store_is_gone_and_recovers(browser: Any, tmp_path: Path) -> None:
    """An API on PostgreSQL whose server stops answers 503: the banner names the store, not the API."""
    root = Path(tempfile.mkdtemp(prefix="coherence-pg-console-"))
    server = PostgresServer(root).start()
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": server.new_database(migrated=True)})
    context = None
    try:
        api.start()
        context = new_context(browser, api.url)
        page = context.new_page()
        page.goto("/decisions")
        banner = page.locator("#blind")
        server.stop()
        expect(banner).to_contain_text("its store cannot be reached (503)", timeout=REFRESH_MS + 5_000)
        expect(page.locator("main")).to_have_class(re.compile(r"\bstale\b"))
        plain = page.request.get("/tasks", headers={"Accept": "text/html"})  # a reload, as without JavaScript
        assert plain.status == 503 and "<h1>Store unavailable</h1>" in plain.text()
        assert page.request.get("/api/agent/tasks").json()["detail"].startswith("store unavailable")
        server.resume()
        expect(banner).to_be_hidden(timeout=REFRESH_MS + 10_000)
        expect(page.locator("main")).not_to_have_class(re.compile(r"\bstale\b"))
        expect(page.locator("h1")).to_contain_text("Decisions")
    finally:
        if context is not None:
            context.close()
        api.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_restart_is_confirmed_on_its_own_page_without_javascript(browser: Any, pipeline: Any) -> None:
    context = new_context(browser, pipeline[0].url, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto("/")
        form = page.locator("form[action='/restart']")
        expect(form.get_by_label("Component")).to_have_value("")  # no component until one is chosen
        form.get_by_label("Component").select_option("monitor")
        form.get_by_label("Reason").fill("new settings")
        form.get_by_role("button", name=re.compile("^Restart")).click()
        expect(page.locator("h1")).to_have_text("Restart monitor?")
        expect(page.locator("main")).to_contain_text("The monitor stops and starts again")
        shoot(page, "restart-confirm")
        page.get_by_role("button", name="Yes, restart monitor").click()
        expect(page).to_have_url(re.compile(r"/\?restart_notice=no-supervisor#restart$"))
        expect(page.get_by_role("status")).to_contain_text("No supervisor runs")  # none in this test's pipeline
    finally:
        context.close()


def test_a_type_is_paused_with_a_reason_and_resumed(page: Any, pipeline: Any) -> None:
    """Pause one task type from the console (the reason is required), see the pause on the overview with who and
    why, and resume it from there: its waiting task then runs."""
    _, client, _ = pipeline
    page.goto("/signin")
    page.get_by_label("Your name").fill("carol")
    page.get_by_role("button", name="Sign in").click()
    page.goto("/pauses")
    form = page.locator("form[action='/pauses']")
    form.get_by_label("What").select_option("run")
    form.get_by_role("button", name="Pause").click()
    assert client.pauses().pauses == []  # the browser refuses the form without its required reason
    form.get_by_label("Reason").fill("provider down")
    form.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_contain_text("Paused: runners get nothing of it now")
    [held] = client.pauses().pauses
    assert (held.scope, held.by, held.reason) == ("run", "console:carol", "provider down")
    task = client.create_task("Wait out the pause", TaskType.RUN, command="true")
    page.goto("/")
    row = page.locator("table.pauses").get_by_role("row").filter(has_text="provider down")
    expect(row).to_contain_text("console:carol")
    expect(page.locator("article.flag").filter(has_text="provider down")).to_contain_text("paused")
    shoot(page, "overview-paused")
    assert _status(client, task.id, TaskStatus.PENDING)  # held while paused (the runner polls all along)
    row.get_by_role("button", name="Resume run").click()
    expect(page.get_by_role("status")).to_contain_text("Resumed")
    assert client.pauses().pauses == []
    wait_until(lambda: _status(client, task.id, TaskStatus.COMPLETED), 60, "the held task to run once resumed")


def test_the_throughput_chart_takes_a_range(page: Any) -> None:
    page.goto("/")
    ranges = page.get_by_role("navigation", name="Range of the throughput chart")
    expect(ranges.get_by_role("link", name="last 24 h")).to_have_attribute("aria-current", "true")
    ranges.get_by_role("link", name="last 30 days").click()
    expect(page).to_have_url(re.compile(r"/\?range=30d$"))
    expect(page.locator("svg.chart").first).to_have_attribute("aria-label", "Tasks finished per day, last 30 days")
    expect(page.locator("svg.chart").first.locator("rect.s-completed, rect.s-failed").first).to_be_attached()
    page.get_by_role("link", name="last 7 days").click()
    expect(page.locator("figure").first).to_contain_text("Tasks finished per 6 hours (UTC), last 7 days")
    page.goto("/?range=1y")
    expect(page.locator("h1")).to_have_text("Unknown range")


def test_times_are_shown_in_the_viewers_zone_with_utc_on_hover(browser: Any, pipeline: Any) -> None:
    context = new_context(browser, pipeline[0].url, timezone_id="Asia/Kolkata")  # UTC+05:30, no summer time
    page = context.new_page()
    try:
        page.goto("/")
        shown = page.locator("h1 time")
        utc = datetime.strptime(shown.get_attribute("datetime"), "%Y-%m-%dT%H:%M:%SZ")
        expect(shown).to_have_text(re.compile("^" + re.escape((utc + timedelta(hours=5, minutes=30))
                                                              .strftime("%Y-%m-%d %H:%M:%S"))))
        assert shown.get_attribute("title") == utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    finally:
        context.close()


def test_an_unknown_console_url_is_an_html_404_with_a_way_home(page: Any) -> None:
    answer = page.goto("/no-such-page")
    assert answer is not None and answer.status == 404
    expect(page.locator("h1")).to_have_text("Page not found")
    page.get_by_role("link", name="Overview").last.click()
    expect(page.get_by_role("heading", name="Attention", exact=True)).to_be_visible()


@pytest.fixture(scope="module")
def token_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    api = ServedApi(tmp_path_factory.mktemp("console-token") / "home", env={"COHERENCE_API_TOKEN": TOKEN}).start()
    yield api
    api.stop()


def test_with_a_token_visitors_sign_in_and_forms_need_their_csrf_token(browser: Any, token_api: ServedApi) -> None:
    context = new_context(browser, token_api.url)
    page = context.new_page()
    try:
        page.goto("/tasks?status=failed")
        expect(page).to_have_url(re.compile(r"/signin\?next=%2Ftasks%3Fstatus%3Dfailed$"))
        shoot(page, "signin")
        page.get_by_label("API token").fill("wrong-token-but-long-enough")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("not the API token")
        assert not [c for c in context.cookies() if c["name"] == "coherence_session"]
        page.get_by_label("API token").fill(TOKEN)
        page.get_by_label("Your name").fill("bob")
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(re.compile(r"/tasks\?status=failed$"))
        expect(page.locator("header")).to_contain_text("bob")
        page.goto("/tasks")
        page.get_by_label("Direction").fill("made without a CSRF token")
        page.evaluate("document.querySelectorAll('form[action=\"/tasks\"] input[name=csrf]').forEach(e => e.remove())")
        page.get_by_role("button", name="Create task").click()
        expect(page.get_by_role("alert")).to_contain_text("CSRF token is missing or wrong")
        page.goto("/tasks")
        page.get_by_label("Direction").fill("made properly")
        page.get_by_label("Command").fill("echo hi")
        page.get_by_role("button", name="Create task").click()
        expect(page).to_have_url(re.compile(r"/tasks/1$"))
        with ApiClient(token_api.url, token=TOKEN) as client:
            assert client.count_tasks().total == 1
    finally:
        context.close()


def test_the_audit_page_and_a_tasks_own_records_show_who_acted(browser: Any, token_api: ServedApi) -> None:
    context = new_context(browser, token_api.url)
    page = context.new_page()
    try:
        page.goto("/signin")
        page.get_by_label("API token").fill(TOKEN)
        page.get_by_label("Your name").fill("carol")
        page.get_by_role("button", name="Sign in").click()
        page.goto("/tasks")
        page.get_by_label("Direction").fill("audited from the console")
        page.get_by_label("Command").fill("echo audited")
        page.get_by_role("button", name="Create task").click()
        expect(page).to_have_url(re.compile(r"/tasks/\d+$"))
        task_id = int(page.url.rsplit("/", 1)[1])
        own = page.get_by_role("region", name=re.compile("^Audit trail"))
        expect(own.locator("tbody tr")).to_have_count(1)
        expect(own.locator("tbody tr")).to_contain_text("console:carol")
        expect(own.locator("tbody tr")).to_contain_text("create")
        expect(own.locator("tbody tr")).to_contain_text("- → pending")

        page.get_by_role("link", name="Audit").click()
        expect(page.locator("h1")).to_contain_text("Audit trail")
        page.get_by_label("Actor").fill("console:carol")
        page.get_by_role("button", name="Filter").click()
        expect(page).to_have_url(re.compile(r"/audit\?action=&actor=console%3Acarol&task_id=$"))
        rows = page.locator("table.audit tbody tr")
        expect(rows).to_have_count(2)  # newest first: the create, then the sign-in
        expect(rows.first).to_contain_text("create")
        expect(rows.nth(1)).to_contain_text("sign_in")
        shoot(page, "audit")
        page.get_by_label("Action").fill("sign_in")
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("console")
        page.goto("/audit?task_id=nope")
        expect(page.locator("h1")).to_have_text("Unknown filter")
        page.goto(f"/audit?task_id={task_id}")
        rows.first.get_by_role("link", name=f"#{task_id}").click()
        expect(page).to_have_url(re.compile(rf"/tasks/{task_id}$"))
    finally:
        context.close()
