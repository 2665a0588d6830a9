"""The console's face for the JSON API's errors: a browser asking for a page gets an HTML error page instead of
JSON, with the status and headers the API's handlers chose."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from coherence_network.console.pages import Visit, render, sessions_of
from coherence_network.console.session import COOKIE
from coherence_network.store.errors import StoreError

_ERROR_TITLES = {404: "Page not found", 405: "Method not allowed", 503: "Store unavailable"}


def _wants_html(request: Request) -> bool:
    """A browser asking for a page: HTML accepted, and a path outside the JSON API (which always answers JSON)."""
    path = request.url.path
    return "text/html" in request.headers.get("accept", "") and not (path == "/api" or path.startswith("/api/"))


def html_errors_for_browsers(app: FastAPI) -> None:
    """An unknown URL, a method a path does not answer and a store that cannot be reached answer a browser with the
    console's error page (same status and headers) instead of the JSON a client gets: the JSON API's handlers
    (api/errors.py) decide the status, this only changes the face."""
    for kind in (HTTPException, StoreError):
        json_handler = app.exception_handlers[kind]

        async def handler(request: Request, exc: Exception,
                          json_handler: Callable[..., Any] = json_handler) -> Response:
            answer = await json_handler(request, exc)
            if not _wants_html(request) or answer.status_code < 400:
                return answer
            session = sessions_of(request).verify(request.cookies.get(COOKIE))
            status = answer.status_code
            page = render(request, "error.html", Visit(session) if session else None, code=status,
                          title=_ERROR_TITLES.get(status, "Error"), messages=[_error_words(request, answer)],
                          back=None, refresh=5 if status == 503 and request.method == "GET" else None)
            if "allow" in answer.headers:
                page.headers["Allow"] = answer.headers["allow"]
            return page

        app.add_exception_handler(kind, handler)


def _error_words(request: Request, answer: Response) -> str:
    """What the error page says: the path for a 404 and 405; the JSON API's reason otherwise."""
    if answer.status_code == 404:
        return f"The console has no page at {request.url.path[:200]}."
    if answer.status_code == 405:
        return f"{request.url.path[:200]} does not answer {request.method}; it answers {answer.headers.get('allow')}."
    detail = json.loads(bytes(answer.body)).get("detail")
    reason = detail if isinstance(detail, str) else "the request was refused"
    if answer.status_code == 503:
        return f"The API answers but cannot reach its store ({reason}). Reload once the store is back."
    return reason
