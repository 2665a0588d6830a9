"""A backlog item's page in a real browser (Playwright driving Debian's chromium) against a real API on SQLite: from
the navigation's Items list to the item, its phases with their tasks and verdict, its commits, its decision trail,
and from one of its tasks back to the item."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.test_console_browser import browser, shoot  # noqa: F401  (browser: the shared fixture)
from tests.integration.test_items import SHA, SLUG, make_item
from tests.support.api import ServedApi


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    process = ServedApi(Path(tmp_path_factory.mktemp("items")) / "home").start()
    assert process.app is not None
    make_item(process.app.state.store)
    yield process
    process.stop()


def test_the_item_page_shows_its_phases_commits_and_trail(browser: Any, api: ServedApi) -> None:  # noqa: F811
    context = browser.new_context(base_url=api.url, viewport={"width": 1280, "height": 900}, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto("/")
        page.get_by_role("navigation", name="Console").get_by_role("link", name="Items").click()
        page.get_by_role("link", name=SLUG).click()
        expect(page.get_by_role("heading", level=1)).to_contain_text(SLUG)
        phases = page.locator("table.phase caption")
        expect(phases).to_have_text(["spec", "impl", "review"])
        review = page.locator("table.phase", has=page.locator("caption", has_text="review"))
        expect(review.locator("tbody tr")).to_contain_text("pass")
        impl = page.locator("table.phase", has=page.locator("caption", has_text="impl"))
        expect(impl.locator("tbody tr")).to_have_count(2)
        expect(page.locator("#commits ~ div")).to_contain_text(SHA)
        expect(page.locator("section", has=page.locator("#trail"))).to_contain_text("decide")
        shoot(page, "item")

        page.locator("table.phase").first.get_by_role("link").first.click()  # the spec task's page
        expect(page.locator("#item-link")).to_have_text("Add a login page")
        page.locator("#item-link").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text(SLUG)
    finally:
        context.close()
