"""A loopback HTTP proxy in front of the API that can hold one kind of request (a slow network, or an API that is
slow to answer one call) or its answer (the API acted, its answer is late: a stalled API or network) until the
test releases it, or answer it 503 (an API that cannot serve it); everything
else passes straight through, long polls included. It counts the requests it sees by their path's last segment, so
a test can wait for a runner's next call."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from tests.support.net import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "te", "trailer",
              "upgrade"}


class HoldingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()  # requests by their path's last segment ("claim", "finish"...)
        self.held = 0  # requests waiting for release() now
        self.holding: str | None = None  # last path segment of the requests to hold
        self.holding_answers: str | None = None  # last path segment of the requests whose answers to hold
        self.failing: set[str] = set()  # last path segments of the requests answered 503
        self.released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        self.client = httpx.Client(base_url=upstream, timeout=120)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, segment: str) -> int:
        with self.lock:
            return self.seen[segment]

    def hold(self, segment: str) -> None:
        """From now on, hold requests whose path ends in ``/segment`` until ``release``."""
        self.released.clear()
        self.holding = segment

    def hold_answers(self, segment: str) -> None:
        """From now on, pass requests whose path ends in ``/segment`` to the API but hold its answers until
        ``release`` (``held`` counts them)."""
        self.released.clear()
        self.holding_answers = segment

    def fail(self, *segments: str) -> None:
        """Answer requests whose path ends in one of ``/segments`` with 503 (none: pass everything again)."""
        self.failing = set(segments)

    def release(self) -> None:
        self.holding = self.holding_answers = None
        self.released.set()

    def start(self) -> HoldingProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self.client.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                segment = self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
                with proxy.lock:
                    proxy.seen[segment] += 1
                    failed = segment in proxy.failing
                    hold = proxy.holding == segment and not failed
                    proxy.held += hold
                if failed:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if hold:
                    proxy.released.wait()
                    with proxy.lock:
                        proxy.held -= 1
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                try:
                    answer = proxy.client.request(self.command, self.path, content=body, headers=headers)
                except httpx.HTTPError:  # the proxy is stopping (its client closed) or the API went away
                    self.close_connection = True
                    return
                if proxy.holding_answers == segment:
                    with proxy.lock:
                        proxy.held += 1
                    proxy.released.wait()
                    with proxy.lock:
                        proxy.held -= 1
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        return Handler
