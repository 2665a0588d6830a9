"""A fake npm registry and PyPI JSON API on 127.0.0.1 (a real HTTP server in a thread) for the indexer tests.

Both serve the same generated graph of ``n`` packages. Package ``i`` depends on ``3i+1`` and ``3i+2`` (runtime),
``3i+3`` (optional, under an extra on PyPI) and back on ``i // 2`` (a cycle; behind an environment marker on PyPI),
and has a dev dependency on ``devtool-{i % 5}``; every 10th also depends on ``ghost-{i}``, which answers 404. So
the crawl from ``pkg-0`` reaches every ``pkg-*``. Every 7th package is scoped (``@fx/pkg-i``) on npm.

With ``faults`` on, some packages answer 500 once or 429 (Retry-After) once before their document, and seeds
outside the generated graph exercise failures: ``broken-*`` (not JSON), ``weird-*`` (JSON of the wrong shape),
``down-*`` (always 500) and ``bad-root``, which depends on one of each.

``latency`` holds each answer that long (the benchmark's stand-in for a network). ``roots`` are extra names (the
shipped seed lists, for the runbook drill) served in both ecosystems: the k-th depends on package ``k``, so a crawl
from the default seeds grows into the generated graph.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

BAD_ROOT_DEPS = ("broken-1", "weird-1", "down-1")


def npm_name(i: int) -> str:
    return f"@fx/pkg-{i}" if i % 7 == 3 else f"pkg-{i}"


def pypi_name(i: int) -> str:
    """Display names vary in case and separators; the normalised form is always ``pkg-{i}``."""
    return ("Pkg_" if i % 4 == 1 else "pkg.") + str(i) if i % 2 else f"pkg-{i}"


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class FixtureRegistry:
    def __init__(
        self, n: int = 300, *, faults: bool = True, retry_after: str = "1", roots: Iterable[str] = (),
        latency: float = 0.0,
    ) -> None:
        self.n = n
        self.latency = latency  # seconds each answer is held, like a registry across a network
        self.roots = {_pep503(name): k % n for k, name in enumerate(roots)}
        self.faults = faults
        self.retry_after = retry_after
        self.requests: Counter[str] = Counter()  # package name (as requested, decoded) -> requests
        self._lock = threading.Lock()
        self._pause_after: int | None = None
        self._gate = threading.Event()
        self._gate.set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- what a test uses ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def npm_url(self) -> str:
        return self.url + "npm/"

    @property
    def pypi_index_url(self) -> str:
        """The simple index URL an operator puts in pip.conf; the JSON API is beside it."""
        return self.url + "simple/"

    def start(self) -> FixtureRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._gate.set()
        self._server.shutdown()
        self._server.server_close()

    def pause_after(self, count: int) -> None:
        """Hold every request after the next ``count`` until ``release`` (a registry that stops answering)."""
        with self._lock:
            self._pause_after = sum(self.requests.values()) + count
            self._gate.clear()

    def release(self) -> None:
        self._pause_after = None
        self._gate.set()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- the graph -----------------------------------------------------------------------------------------
    def edges(self, i: int) -> list[tuple[int | str, str]]:
        """(target index or name, kind) of package i; kinds as the indexer should store them."""
        out: list[tuple[int | str, str]] = []
        for j, kind in ((3 * i + 1, "runtime"), (3 * i + 2, "runtime"), (3 * i + 3, "optional")):
            if j < self.n:
                out.append((j, kind))
        if i:
            out.append((i // 2, "optional" if i % 2 else "runtime"))
        if i % 10 == 0:
            out.append((f"ghost-{i}", "runtime"))
        out.append((f"devtool-{i % 5}", "dev"))
        return out

    def ghosts(self) -> list[str]:
        return [f"ghost-{i}" for i in range(0, self.n, 10)]

    def index_of(self, name: str) -> int | None:
        match = re.fullmatch(r"(?:@fx/)?pkg-(\d+)", name)
        if not match or int(match.group(1)) >= self.n or npm_name(int(match.group(1))) != name:
            return None
        return int(match.group(1))

    def _fault(self, name: str, seen: int) -> tuple[int, dict[str, str]] | None:
        """(status, headers) for a request that should not be answered with the document."""
        if name.startswith("down-"):
            return 500, {}
        index = self.index_of(name) if self.faults else None
        if index is not None and seen == 1 and index % 13 == 5:
            return 500, {}
        if index is not None and seen == 1 and index % 17 == 6:
            return 429, {"Retry-After": self.retry_after}
        return None

    def npm_document(self, name: str) -> Any:
        if name.startswith("broken-"):
            return b"{not json"
        if name.startswith("weird-"):
            return {"name": name, "versions": {"1.0.0": {}}}
        if name == "bad-root":
            return self._npm_packument(name, {d: "^1.0.0" for d in BAD_ROOT_DEPS}, {}, {})
        if name.startswith("devtool-"):
            return self._npm_packument(name, {}, {}, {})
        if _pep503(name) in self.roots:
            return self._npm_packument(name, {npm_name(self.roots[_pep503(name)]): "^1.0.0"}, {}, {})
        index = self.index_of(name)
        if index is None:
            return None
        runtime, optional, dev = {}, {}, {}
        for target, kind in self.edges(index):
            dep = npm_name(target) if isinstance(target, int) else target
            {"runtime": runtime, "optional": optional, "dev": dev}[kind][dep] = f"^{index % 3}.0.0"
        return self._npm_packument(name, runtime, optional, dev)

    @staticmethod
    def _npm_packument(name: str, runtime: dict[str, str], optional: dict[str, str], dev: dict[str, str]) -> Any:
        old = {"name": name, "version": "0.9.0", "dependencies": {"left-over": "1"}}
        latest = {"name": name, "version": "1.2.3", "description": f"The {name} package", "license": "MIT",
                  "homepage": f"http://127.0.0.1/{name}", "dependencies": runtime, "optionalDependencies": optional,
                  "devDependencies": dev}
        return {"name": name, "dist-tags": {"latest": "1.2.3"}, "versions": {"0.9.0": old, "1.2.3": latest}}

    def pypi_document(self, name: str) -> Any:
        if name.startswith("broken-"):
            return b"<html>not json</html>"
        if name.startswith("weird-"):
            return {"info": ["not", "an", "object"]}
        if name == "bad-root":
            return self._pypi_json(name, [f"{d}>=1" for d in BAD_ROOT_DEPS])
        if name.startswith("devtool-"):
            return self._pypi_json(name, [])
        if name in self.roots:
            return self._pypi_json(name, [f"{pypi_name(self.roots[name])}>=1"])
        match = re.fullmatch(r"pkg-(\d+)", name)
        if not match or int(match.group(1)) >= self.n:
            return None
        index = int(match.group(1))
        lines = []
        for target, kind in self.edges(index):
            dep = pypi_name(target) if isinstance(target, int) else target
            if kind == "dev":
                lines.append(f'{dep}; extra == "dev"')  # PyPI has no dev kind: an extra, so an optional edge
            elif kind == "optional" and isinstance(target, int) and target > index:
                lines.append(f'{dep}[speed]>=0.1; extra == "full"')
            elif kind == "optional":
                lines.append(f'{dep} (>=1.0); python_version < "3.8"')
            else:
                lines.append(f"{dep}>=1.{index % 3}")
        if index % 11 == 4:
            lines.append("!!! not a requirement")
        return self._pypi_json(pypi_name(index), lines)

    @staticmethod
    def _pypi_json(display: str, requires: list[str]) -> Any:
        return {"info": {"name": display, "version": "2.0.1", "summary": f"The {display} project",
                         "license": "BSD-3-Clause\nfull text follows", "home_page": "",
                         "project_urls": {"Homepage": f"http://127.0.0.1/{display}"},
                         "requires_dist": requires or None},
                "releases": {}}

    # --- HTTP ----------------------------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall

            def log_message(self, *_: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path.startswith("/npm/"):
                    ecosystem, name = "npm", unquote(path[len("/npm/"):])
                elif (match := re.fullmatch(r"/pypi/([^/]+)/json", path)) is not None:
                    ecosystem, name = "pypi", unquote(match.group(1))
                    if _pep503(name) != name:
                        self._send(301, b"", {"Location": f"/pypi/{_pep503(name)}/json"})
                        return
                else:
                    self._send(404, b'{"error": "not found"}')
                    return
                with registry._lock:
                    registry.requests[name] += 1
                    seen = registry.requests[name]
                    hold = registry._pause_after is not None and sum(registry.requests.values()) > registry._pause_after
                if hold:
                    registry._gate.wait(60)
                if registry.latency:
                    time.sleep(registry.latency)
                fault = registry._fault(name, seen)
                if fault is not None:
                    self._send(fault[0], b'{"error": "try again"}', fault[1])
                    return
                document = registry.npm_document(name) if ecosystem == "npm" else registry.pypi_document(name)
                if document is None:
                    self._send(404, b'{"error": "Not found"}')
                else:
                    self._send(200, document if isinstance(document, bytes) else json.dumps(document).encode())

        return Handler
