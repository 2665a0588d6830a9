"""How errors are answered: store errors by whose fault they are, and validation errors in bounded excerpts.

A store error the request caused (a value the store refused, a constraint it broke) is a 4xx, which clients never
retry; 503 is kept for a store that is really unavailable (unreachable, locked, corrupt, not migrated), which a retry
can outlive. An error answer quotes the request only in short excerpts: a 300 MB body must not come back in a 422.
"""

from __future__ import annotations

import logging
import math
import reprlib
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount

from coherence_network.request_bodies import storable_text
from coherence_network.store import Conflict, NotFound
from coherence_network.store.errors import StoreError, store_error_cause, store_error_status

log = logging.getLogger("coherence.api")
MAX_ERRORS_SHOWN = 10
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
EXCERPT_CHARS = 200
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxlong = 3, 5, 5, 60, 40


def excerpt(value: Any) -> Any:
    """Numbers and short text as they are; anything else as a short repr; unstorable characters replaced."""
    if value is None or isinstance(value, bool) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, int) and value.bit_length() <= 64:
        return value
    text = storable_text(value if isinstance(value, str) else _REPR.repr(value))[0]
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def bounded_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """One pydantic error with its location, message, input and context cut to excerpts."""
    bounded = {
        "type": error.get("type", ""),
        "loc": [part if isinstance(part, int) else excerpt(str(part)) for part in error.get("loc", ())],
        "msg": excerpt(str(error.get("msg", ""))),
        "input": excerpt(error.get("input")),
    }
    ctx = {k: excerpt(v) for k, v in (error.get("ctx") or {}).items() if isinstance(v, (int, float, str))}
    if ctx:
        bounded["ctx"] = ctx
    return bounded


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route of ``app`` answers on this request's path: Starlette's 405 names only the first
    route's, and FastAPI makes one route per method. Each method is asked of the router as a request would."""
    routes = [route for route in app.router.routes if not isinstance(route, Mount)]  # a mount takes any method
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)]


def install_error_handlers(app: FastAPI) -> None:
    """404 and 409 from the store's own errors, bounded 422s, store errors mapped by whose fault they are, and 405s
    that name every allowed method."""

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(app, request))}
        return await http_exception_handler(request, exc)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "current_status": exc.current_status}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        body: dict[str, Any] = {"detail": [bounded_error(e) for e in errors[:MAX_ERRORS_SHOWN]]}
        if len(errors) > MAX_ERRORS_SHOWN:
            body["errors_not_shown"] = len(errors) - MAX_ERRORS_SHOWN
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        status = store_error_status(exc)
        reason = excerpt(store_error_cause(exc))
        if status == 503:
            log.error("store error on %s %s: %s", request.method, request.url.path, exc.orig)
            reaper = getattr(request.app.state, "reaper", None)  # none while the app runs without its lifespan
            if reaper is not None:
                reaper.store_failed()  # renewals may have failed too: the reaper holds back once it is back
            return JSONResponse({"detail": f"store unavailable: {reason}"}, status_code=503)
        log.warning("store refused %s %s (%d): %s", request.method, request.url.path, status, reason)
        if status == 409:
            return JSONResponse({"detail": f"conflicts with what the store holds: {reason}"}, status_code=409)
        refused = {"type": "store_refused", "loc": ["request"], "msg": f"the store cannot hold this value: {reason}"}
        return JSONResponse({"detail": [refused]}, status_code=422)
