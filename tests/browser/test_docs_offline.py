"""/docs renders with no network but loopback: Chromium (Debian's, through Playwright) against the API over loopback,
every request that leaves 127.0.0.1 refused by route interception. Swagger UI's files come from the API itself, and
the page's own Content-Security-Policy lets its one inline script run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Route, expect, sync_playwright

from coherence_network.api.app import is_loopback
from tests.support.api import ServedApi
from tests.support.required import missing

CHROMIUM = Path("/usr/bin/chromium")


def _loopback(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname or "")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    started = ServedApi(tmp_path_factory.mktemp("docs") / "home").start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


def test_the_reference_renders_with_every_request_off_loopback_refused(api: ServedApi, browser: Any) -> None:
    context = browser.new_context(base_url=api.url)
    refused: list[str] = []
    loaded: list[str] = []

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if _loopback(url) or url.startswith("data:"):
            loaded.append(url)
            route.continue_()
        else:
            refused.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", only_loopback)
    page = context.new_page()
    try:
        answer = page.goto("/docs")
        assert answer is not None and "script-src 'self' 'sha256-" in answer.headers["content-security-policy"]
        # Swagger UI parses the whole OpenAPI document before it draws: seconds when the suite loads both cores
        expect(page.locator(".information-container .title")).to_contain_text("Coherence Network API", timeout=30_000)
        expect(page.locator(".opblock").first).to_be_visible()
        operations = page.locator(".opblock").count()
        paths = page.locator(".opblock-summary-path").all_inner_texts()
    finally:
        context.close()
    assert operations >= 20 and any("/api/agent/tasks/claim" in p.replace("\u200b", "") for p in paths), paths[:10]
    assert refused == [], f"the page asked for files from elsewhere: {refused}"
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in loaded), loaded
