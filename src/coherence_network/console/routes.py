"""The console's pages and forms, mounted on the API's app. Reads are paged store queries; every action is the store
call the JSON API makes, validated by the API's own request models, so an illegal move shows the API's message (409)
on the page.

Forms post ``application/x-www-form-urlencoded`` and answer 303 to the page that shows the result, so they work
without JavaScript. The body is read only after the session and its CSRF token are known, never before
(``forms``). One module per noun: ``pages`` (what every page shares), ``signin``, ``overview`` (and its restart
form), ``tasks``, ``bulk``, ``steering`` (pauses), ``graph``, ``audit``, ``items`` (backlog items), ``error_pages``;
``figures`` names the throughput chart's ranges.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from coherence_network.console import audit, bulk, graph, items, overview, signin, steering, tasks
from coherence_network.console.error_pages import html_errors_for_browsers
from coherence_network.console.forms import FormRefused
from coherence_network.console.pages import SignInNeeded
from coherence_network.console.session import Sessions, key_from_token
from coherence_network.logfiles import RUN_FILES, shared_secret
from coherence_network.settings import Settings

# One router holding every page's route itself (include_router would nest the parts, and the runbook's test reads
# the console's routes from this router).
router = APIRouter(include_in_schema=False)
for part in (overview, signin, tasks, bulk, graph, steering, audit, items):
    router.routes.extend(part.router.routes)


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the console at "/" with its static files, and answer an unsigned visitor with the sign-in page."""
    token = settings.coherence_api_token
    # Without a token the key is this home's generated one, so every uvicorn worker accepts the others' cookies.
    key = key_from_token(token or shared_secret(RUN_FILES["console_session_key"].path(settings)))
    app.state.console_sessions = Sessions(key, settings.coherence_console_session_hours * 3600, token or None)
    app.mount("/console-static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static")
    app.include_router(router)

    @app.exception_handler(FormRefused)
    async def _refused(_: Request, exc: FormRefused) -> HTMLResponse:
        return exc.page

    @app.exception_handler(SignInNeeded)
    async def _sign_in(_: Request, exc: SignInNeeded) -> RedirectResponse:
        return RedirectResponse(f"/signin?{urlencode({'next': exc.target})}", status_code=303)

    html_errors_for_browsers(app)

