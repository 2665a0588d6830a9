"""The tasks page's search and sortable columns in a real browser (Playwright driving Debian's chromium) against a
real API on SQLite: search from the box, sort by a column heading, flip it, and keep the search throughout."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from coherence_network.client import ApiClient
from coherence_network.contract import TaskType
from tests.browser.test_console_browser import browser, shoot  # noqa: F401  (browser: the shared fixture)
from tests.support.api import ServedApi


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    process = ServedApi(Path(tmp_path_factory.mktemp("search")) / "home").start()
    with ApiClient(process.url, retries=0) as client:
        for direction, priority in (("Backup the wiki", 1), ("Backup the database", 5), ("Rotate the logs", 9)):
            client.create_task(direction, TaskType.SPEC, priority=priority)
    yield process
    process.stop()


def test_search_then_sort_by_a_column_and_flip_it(browser: Any, api: ServedApi) -> None:  # noqa: F811
    context = browser.new_context(base_url=api.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto("/tasks")
        page.get_by_label("Search").fill("backup")
        page.get_by_role("button", name="Search").click()
        expect(page).to_have_url(re.compile(r"q=backup"))
        expect(page.locator("#matching")).to_have_text("2 matching “backup”")
        rows = page.locator("table.list tbody tr")
        expect(rows).to_have_count(2)

        page.get_by_role("link", name="Priority").click()
        priority = page.locator("th[aria-sort]")
        expect(priority).to_have_attribute("aria-sort", "descending")
        expect(priority).to_contain_text("Priority ▼")
        expect(rows.first).to_contain_text("Backup the database")
        expect(page.get_by_label("Search")).to_have_value("backup")  # the search stays
        shoot(page, "tasks-search")

        page.get_by_role("link", name="Priority").click()  # the active heading flips its direction
        expect(priority).to_have_attribute("aria-sort", "ascending")
        expect(rows.first).to_contain_text("Backup the wiki")
        expect(rows).to_have_count(2)

        page.get_by_label("Search").fill("nothing like it")
        page.get_by_role("button", name="Search").click()
        expect(page).to_have_url(re.compile(r"sort=priority"))  # the sort stays with a new search
        expect(page.locator("table.list tbody")).to_contain_text("No task matches “nothing like it”.")
    finally:
        context.close()
