"""The request guard: what every HTTP request meets before the application reads a byte of its body.

In this order: the Host header against the allow-list (a DNS-rebinding page sends its own name: 421), the bearer
token on every path but the open ones and the console's (401; a console session cookie also opens the JSON GETs its
pages poll, and the console itself sends an unsigned visitor to its sign-in page), the body size (413 from
Content-Length, and again while a chunked body streams in). A pure ASGI middleware, not a FastAPI dependency:
FastAPI reads and parses the body before any dependency runs, so a dependency cannot keep an unauthenticated or
oversized body out of memory.

A refused request's body is never read by us; uvicorn discards whatever of it still arrives (without buffering it)
and then reads the next request, so a client that sends its whole body before reading the answer still gets the
401 or 413 instead of a reset connection.
"""

from __future__ import annotations

import logging
import re

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coherence_network.console import is_console_path
from coherence_network.console.session import COOKIE, Sessions, key_from_token
from coherence_network.setting_values import host_name
from coherence_network.settings import Settings

OPEN_PATHS = frozenset({"/api/health", "/api/ready"})  # probes: a load balancer or watchdog carries no token
WEBHOOK_PATH = "/api/agent/telegram/webhook"  # Telegram cannot send our token; the route checks its own secret
log = logging.getLogger("coherence.api")
_ACCEPTED_HOSTS = 64  # Host values remembered as accepted (a handful in practice: the API's names and addresses)
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.\-]+))(?::[0-9]{0,5})?")


class RequestGuard:
    """ASGI middleware: Host allow-list, bearer token, body limit; see the module docstring."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = settings.allowed_hosts
        token = settings.coherence_api_token
        # The token's check, and the verifier of what the console signed with the key derived from it.
        self.sessions = Sessions(key_from_token(token), 0, token) if token else None
        self.max_body = settings.coherence_max_body_bytes
        # Host headers already accepted, with the address they arrived at: the next request with the same pair skips
        # the parse (an ipaddress parse per request cost more than the rest of the guard). Bounded: a client
        # choosing Host values only ever empties it.
        self.accepted: set[tuple[str, str]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        headers = Headers(scope=scope)
        refusal = self._host_refusal(scope, headers) or self._token_refusal(scope, headers)
        if scope["type"] == "websocket":  # none are served today; a future one gets the same door, closed by code
            if refusal is not None:
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        refusal = refusal or self._length_refusal(headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await _BodyLimit(self.app, self.max_body)(scope, receive, send)

    def _host_refusal(self, scope: Scope, headers: Headers) -> JSONResponse | None:
        given = headers.getlist("host")
        if len(given) != 1:
            return _refuse(400, "exactly one Host header is required")
        server = scope.get("server")
        seen = (given[0], str(server[0]) if server else "")
        if seen in self.accepted:
            return None
        match = _HOST.fullmatch(given[0])
        if match is None:
            return _refuse(400, "malformed Host header")
        if self.hosts is not None:
            name = host_name(match["v6"] or match["name"])
            # The address the connection arrived at is never a rebound name (a wildcard bind reached by its address).
            if name not in self.hosts and not (server and name == host_name(str(server[0]))):
                return self._refuse_host(scope, name)
        if len(self.accepted) >= _ACCEPTED_HOSTS:
            self.accepted.clear()
        self.accepted.add(seen)
        return None

    def _refuse_host(self, scope: Scope, name: str) -> JSONResponse:
        shown = name[:100]  # the client chose it: a bounded excerpt in the answer and the log
        client = scope.get("client")
        log.warning("refused Host %r from %s (not in the allow-list; see COHERENCE_ALLOWED_HOSTS)", shown,
                    client[0] if client else "?")
        return _refuse(421, f"host {shown!r} is not served here: add it to COHERENCE_ALLOWED_HOSTS if it should be")

    def _token_refusal(self, scope: Scope, headers: Headers) -> JSONResponse | None:
        path = scope["path"]
        if path in OPEN_PATHS:  # open, but a caller with the token is told more (/api/ready's failure details)
            scope.setdefault("state", {})["token_ok"] = self.sessions is not None and self._bearer_ok(headers)
            return None
        if self.sessions is None or path == WEBHOOK_PATH or is_console_path(path):
            return None
        if scope["method"] in ("GET", "HEAD") and self._signed_in(headers):
            return None  # the console's pages poll the JSON API with their session; they never write through it
        if self._bearer_ok(headers):
            return None
        return _refuse(401, "missing or wrong bearer token (Authorization: Bearer $COHERENCE_API_TOKEN)",
                       {"WWW-Authenticate": "Bearer"})

    def _bearer_ok(self, headers: Headers) -> bool:
        assert self.sessions is not None
        given = headers.getlist("authorization")
        parts = given[0].split() if len(given) == 1 else []
        return (len(parts) == 2 and parts[0].lower() == "bearer"  # the scheme is case-insensitive (RFC 7235)
                and self.sessions.token_ok(parts[1].encode("latin-1")))  # the header's own bytes

    def _signed_in(self, headers: Headers) -> bool:
        assert self.sessions is not None
        cookies = headers.get("cookie")
        if not cookies:
            return False
        return self.sessions.verify(cookie_parser(cookies).get(COOKIE)) is not None

    def _length_refusal(self, headers: Headers) -> JSONResponse | None:
        length = headers.get("content-length")
        if length is None:
            return None
        if not length.isdigit():
            return _refuse(400, "malformed Content-Length")
        if int(length) > self.max_body:
            return _too_large(self.max_body)
        return None


class _BodyLimit:
    """One request's body counted as the application reads it: past the limit the client gets 413, and the
    application is told the client went away, so it stops reading and its own answer is dropped."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.received = 0
        self.exceeded = False
        self.answered = False  # the 413 went out: whatever the application sends after it is dropped
        self.response_started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            if self.exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.max_body:
                    self.exceeded = True
                    if not self.response_started:
                        self.answered = True
                        await _too_large(self.max_body)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if self.answered:
                return  # the application's late answer goes nowhere
            if message["type"] == "http.response.start":
                self.response_started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)


def _too_large(limit: int) -> JSONResponse:
    return _refuse(413, f"request body larger than {limit} bytes (COHERENCE_MAX_BODY_BYTES)")


def _refuse(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)
