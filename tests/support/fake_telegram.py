"""A small fake of the Telegram Bot API on 127.0.0.1 (a real HTTP server in a thread) for end-to-end bot tests.

It serves ``/bot<token>/<method>`` for getUpdates (long-poll over a queue the test fills), sendMessage, setWebhook
and deleteWebhook, records every call, and can answer the next N calls of a method with 429 (with
``parameters.retry_after``) or 500, the way the real one does under load, or late (the call done, its answer slow).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "123456:fake-token-SECRET"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int
    at: float = field(default_factory=time.monotonic)


class FakeTelegram:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.sent: list[dict[str, Any]] = []  # sendMessage params that were answered 200, in order
        self.webhook: dict[str, Any] | None = None
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 1000
        self._failures: dict[str, list[tuple[int, float | None]]] = {}
        self._delays: dict[str, list[float]] = {}
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeTelegram:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # --- what a test does ---------------------------------------------------------------------------------
    def message(self, user_id: int, text: str, *, chat_id: int | None = None, chat_type: str = "private",
                kind: str = "message") -> dict[str, Any]:
        """Queue an update as if ``user_id`` wrote ``text`` (in their private chat unless ``chat_id``)."""
        body = {"message_id": self._next_update_id, "date": int(time.time()), "text": text,
                "from": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"},
                "chat": {"id": chat_id if chat_id is not None else user_id, "type": chat_type}}
        return self.push({kind: body})

    def push(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update (its update_id is assigned here)."""
        with self._cond:
            self._next_update_id += 1
            update = {"update_id": self._next_update_id, **update}
            self._updates.append(update)
            self._cond.notify_all()
        return update

    def fail_next(self, method: str, count: int, status: int, retry_after: float | None = None) -> None:
        """Answer the next ``count`` calls of ``method`` with ``status`` (after failures already planned)."""
        with self._cond:
            self._failures.setdefault(method, []).extend([(status, retry_after)] * count)

    def answer_late(self, method: str, count: int, seconds: float) -> None:
        """Do the next ``count`` calls of ``method`` at once but answer each ``seconds`` later (a slow network)."""
        with self._cond:
            self._delays.setdefault(method, []).extend([seconds] * count)

    def _delay(self, method: str) -> float:
        with self._cond:
            planned = self._delays.get(method)
            return planned.pop(0) if planned else 0.0

    def texts(self, chat_id: int) -> list[str]:
        with self._cond:
            return [m["text"] for m in self.sent if m["chat_id"] == chat_id]

    def calls_of(self, method: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.method == method]

    # --- the server -----------------------------------------------------------------------------------------
    def _answer(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._cond:
            planned = self._failures.get(method)
            if planned:
                status, retry_after = planned.pop(0)
                self.calls.append(Call(method, params, status))
                body: dict[str, Any] = {"ok": False, "error_code": status, "description": f"fake error {status}"}
                if retry_after is not None:
                    body["parameters"] = {"retry_after": retry_after}
                return status, body
            self.calls.append(Call(method, params, 200))
            if method == "getUpdates":
                return 200, {"ok": True, "result": self._wait_updates(params)}
            if method == "sendMessage":
                self.sent.append(params)
                return 200, {"ok": True, "result": {"message_id": len(self.sent), "chat": {"id": params["chat_id"]},
                                                    "text": params["text"]}}
            if method == "setWebhook":
                self.webhook = params
                return 200, {"ok": True, "result": True, "description": "Webhook was set"}
            if method == "deleteWebhook":
                self.webhook = None
                return 200, {"ok": True, "result": True}
            return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}

    def _wait_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Called holding the lock: confirm updates below ``offset``, wait up to ``timeout`` for newer ones."""
        offset = int(params.get("offset", 0))
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + float(params.get("timeout", 0))
        while not self._updates and time.monotonic() < deadline:
            self._cond.wait(deadline - time.monotonic())
        return list(self._updates)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                prefix = f"/bot{fake.token}/"
                if not self.path.startswith(prefix):
                    status, body = 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
                else:
                    method = self.path[len(prefix):]
                    status, body = fake._answer(method, json.loads(raw or b"{}"))
                    time.sleep(fake._delay(method))  # what is modelled here is the time itself: an answer late
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the bot stopped while its long poll waited here
                    pass

            def log_message(self, *_: Any) -> None:
                pass

        return Handler
