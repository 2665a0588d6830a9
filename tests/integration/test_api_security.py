"""The API's front door over real HTTP: the token on every route, the Host allow-list, the body limit.

Each test serves the API (a real `coherence api` process where that is the subject: its memory, its start-up checks,
--host) and talks to it over loopback, with httpx or a raw socket where a client library would hide what is sent (a
body that is announced but never sent, a Host header of our choosing).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from coherence_network.api.app import create_app
from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.settings import Settings
from tests.support.api import ApiProcess, ServedApi
from tests.support.net import free_port, wait_until
from tests.support.runner import RunnerProcess

TOKEN = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TASK = {"direction": "say hello", "task_type": "run", "command": "echo hello"}
OPEN_PATHS = {"/api/health", "/api/ready"}
WEBHOOK = "/api/agent/telegram/webhook"
MiB = 1024 * 1024


@pytest.fixture
def guarded(tmp_path: Path, migrated_store_url: str) -> Iterator[ServedApi]:
    """An API with a token, on each store."""
    api = ServedApi(tmp_path / "home", env={"COHERENCE_API_TOKEN": TOKEN, "DATABASE_URL": migrated_store_url}).start()
    yield api
    api.stop()


def _every_route(tmp_path: Path) -> list[tuple[str, str]]:
    """(method, concrete path) for every route the app has: its OpenAPI operations and the documentation pages."""
    app = create_app(Settings(coherence_home=tmp_path / "routes-only"))
    found = [(method.upper(), re.sub(r"\{[^}]+\}", "1", path))
             for path, operations in app.openapi()["paths"].items() for method in operations]
    found += [(method, route.path) for route in app.routes if isinstance(route, Route) for method in route.methods]
    assert ("GET", "/openapi.json") in found and ("GET", "/api/agent/tasks/1/log") in found
    return found


def test_with_a_token_every_route_but_health_and_ready_needs_it(guarded: ServedApi, tmp_path: Path) -> None:
    # A connection per request: a route's own server error (not this test's subject) ends its connection.
    with httpx.Client(base_url=guarded.url, timeout=30, headers={"Connection": "close"}) as http:
        created = http.post("/api/agent/tasks", json=TASK, headers=AUTH)
        assert created.status_code == 201
        for method, path in [*_every_route(tmp_path), ("GET", "/no/such/route")]:
            body = {} if method in ("POST", "PUT", "PATCH") else None
            refused = http.request(method, path, json=body)
            if path in OPEN_PATHS:
                assert refused.status_code == 200, (method, path, refused.status_code)
            elif path == WEBHOOK:  # Telegram cannot send a bearer token: the webhook checks its own secret header
                assert refused.status_code == 401 and "X-Telegram-Bot-Api-Secret-Token" in refused.text
            else:
                assert refused.status_code == 401, (method, path, refused.status_code, refused.text[:200])
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert TOKEN not in refused.text and "say hello" not in refused.text
            if path != WEBHOOK:
                allowed = http.request(method, path, json=body, headers=AUTH)
                assert allowed.status_code != 401, (method, path)
        assert http.get("/openapi.json", headers=AUTH).json()["paths"]
        assert "say hello" in http.get(f"/api/agent/tasks/{created.json()['id']}", headers=AUTH).text


def test_bearer_scheme_is_case_insensitive_and_the_credential_exact(tmp_path: Path) -> None:
    api = ServedApi(tmp_path / "home", env={"COHERENCE_API_TOKEN": TOKEN}).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
                answer = http.get("/api/agent/tasks/count", headers={"Authorization": f"{scheme} {TOKEN}"})
                assert answer.status_code == 200, scheme
            for wrong in (f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Bearer {TOKEN.upper()}",
                          "Bearer", f"{TOKEN}", f"Bearer {TOKEN} {TOKEN}", ""):
                answer = http.get("/api/agent/tasks/count", headers={"Authorization": wrong})
                assert answer.status_code == 401, wrong
    finally:
        api.stop()


def _coherence_api(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coherence_network.cli", "api", "--port", str(free_port()), *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("token", ["   ", "\t", "short-token", " " + "x" * 20, "x" * 15])
def test_blank_or_short_token_is_refused_at_start(tmp_path: Path, token: str) -> None:
    done = _coherence_api({"COHERENCE_HOME": str(tmp_path), "COHERENCE_API_TOKEN": token})
    assert done.returncode == 2, (done.returncode, done.stderr[-500:])
    assert "COHERENCE_API_TOKEN" in done.stderr and "16" in done.stderr
    assert "Traceback" not in done.stderr
    if token.strip():
        assert token.strip() not in done.stderr  # the error names the variable, never its value


# --- the Host allow-list: DNS rebinding ----------------------------------------------------------------------------
def test_a_foreign_host_cannot_create_a_task(tmp_path: Path, migrated_store_url: str) -> None:
    """A DNS-rebinding page: the browser sends the attacker's name as Host to our loopback port."""
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": migrated_store_url}).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            for host in ("rebind.attacker.example", f"rebind.attacker.example:{api.port}", "localhost.evil",
                         "127.0.0.1.nip.io", "evil.example:80"):
                answer = http.post("/api/agent/tasks", json=TASK, headers={"Host": host})
                assert answer.status_code == 421, (host, answer.status_code)
                assert "host" in answer.json()["detail"].lower()
                assert http.get("/api/agent/tasks", headers={"Host": host}).status_code == 421
            assert http.get("/api/agent/tasks/count").json()["total"] == 0
            for host in ("localhost", f"localhost:{api.port}", "LOCALHOST", "127.0.0.1", f"[::1]:{api.port}", "[::1]"):
                assert http.get("/api/agent/tasks/count", headers={"Host": host}).status_code == 200, host
            # the guard remembers accepted Host values (issue 23): more of them than it keeps, then foreign ones
            for port in range(1, 150):
                assert http.get("/api/agent/tasks/count", headers={"Host": f"localhost:{port}"}).status_code == 200
            for host in ("rebind.attacker.example", "localhost.evil", f"rebind.attacker.example:{api.port}"):
                assert http.get("/api/agent/tasks/count", headers={"Host": host}).status_code == 421, host
    finally:
        api.stop()


def test_a_request_without_host_is_refused(served_api: ServedApi) -> None:
    head = _raw_exchange(served_api.port, b"GET /api/agent/tasks/count HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head[:100]


def test_allowed_hosts_setting_and_the_webhook_host(tmp_path: Path) -> None:
    env = {"COHERENCE_ALLOWED_HOSTS": "api.example.org, Other.Example",
           "TELEGRAM_WEBHOOK_URL": "https://bot.example.net/api/agent/telegram/webhook"}
    api = ServedApi(tmp_path / "home", env=env).start()
    try:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            for host in ("api.example.org", "api.example.org:8443", "other.example", "bot.example.net", "localhost"):
                assert http.get("/api/agent/tasks/count", headers={"Host": host}).status_code == 200, host
            assert http.get("/api/agent/tasks/count", headers={"Host": "example.org"}).status_code == 421
    finally:
        api.stop()


def test_the_name_given_to_api_host_is_allowed(tmp_path: Path) -> None:
    """`coherence api --host <name>` answers requests for that name (the workers read it from the environment)."""
    name = socket.gethostname()
    address = socket.gethostbyname(name)
    port = free_port()
    env = {**os.environ, "COHERENCE_HOME": str(tmp_path / "home"), "COHERENCE_API_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "coherence_network.cli", "api", "--host", name, "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://{address}:{port}/api/agent/tasks/count"

    def answers() -> bool:
        assert proc.poll() is None, f"the API exited with {proc.returncode}"
        try:
            return httpx.get(url, headers={**AUTH, "Host": f"{name}:{port}"}, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, 30, f"the API bound to {name}")
        assert httpx.get(url, headers={**AUTH, "Host": "elsewhere.example"}).status_code == 421
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_the_host_is_checked_before_the_token(tmp_path: Path) -> None:
    api = ServedApi(tmp_path / "home", env={"COHERENCE_API_TOKEN": TOKEN}).start()
    try:
        answer = httpx.get(f"{api.url}/api/agent/tasks/count", headers={**AUTH, "Host": "evil.example"})
        assert answer.status_code == 421
    finally:
        api.stop()


# --- the body limit: nothing unauthenticated or oversized is read ---------------------------------------------------
def _raw_exchange(port: int, head: bytes, body_bytes: int = 0, chunked: bool = False) -> bytes:
    """Send ``head``, then up to ``body_bytes`` of body in 1 MiB pieces while the server lets us; the response head.

    The server may answer (and close) before the body is sent: that is the point, so a failed send ends the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        piece = b"x" * MiB
        sent = 0
        try:
            while sent < body_bytes:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked and body_bytes:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed the connection: the rest of the body is never read
            pass
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except OSError:
            pass
        return answer


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _post_head(port: int, length: int | None, auth: bool) -> bytes:
    lines = [b"POST /api/agent/tasks HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: application/json"]
    lines.append(b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked")
    if auth:
        lines.append(f"Authorization: Bearer {TOKEN}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """A process (its memory is measured), one for the module: no test of it needs a store the others left empty."""
    api = ApiProcess(tmp_path_factory.mktemp("small-limit") / "home", env={"COHERENCE_API_TOKEN": TOKEN,
                                             "COHERENCE_MAX_BODY_BYTES": str(MiB)}).start()
    yield api
    api.stop()


def test_an_announced_body_is_refused_before_it_is_sent(small_limit: ApiProcess) -> None:
    """401 (no token) and 413 (too big) come from the headers alone: the body is never waited for."""
    started = time.monotonic()
    assert _raw_exchange(small_limit.port, _post_head(small_limit.port, 300 * MiB, auth=False)).startswith(
        b"HTTP/1.1 401")
    head = _raw_exchange(small_limit.port, _post_head(small_limit.port, 300 * MiB, auth=True))
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("auth", [False, True], ids=["no-token", "token-over-limit"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_huge_body_does_not_reach_memory(small_limit: ApiProcess, auth: bool, chunked: bool) -> None:
    assert small_limit.proc is not None
    before = _rss_bytes(small_limit.proc.pid)
    head = _raw_exchange(small_limit.port, _post_head(small_limit.port, None if chunked else 64 * MiB, auth),
                         body_bytes=64 * MiB, chunked=chunked)
    grown = _rss_bytes(small_limit.proc.pid) - before
    assert head.startswith(b"HTTP/1.1 413" if auth else b"HTTP/1.1 401"), head[:200]
    assert grown < 16 * MiB, f"the API grew by {grown / MiB:.0f} MiB"


def test_bodies_within_the_limit_still_work(small_limit: ApiProcess) -> None:
    """A runner's finish with a long output near the limit goes through; one byte-heavy step over it is 413."""
    with httpx.Client(base_url=small_limit.url, timeout=30, headers=AUTH) as http:
        task = http.post("/api/agent/tasks", json=TASK).json()
        claim = http.post("/api/agent/tasks/claim", json={"runner_id": "r"}).json()
        finish = f"/api/agent/tasks/{task['id']}/finish"
        over = http.post(finish, json={"claim_token": claim["claim_token"], "status": "completed", "output": "y" * MiB})
        assert over.status_code == 413 and "COHERENCE_MAX_BODY_BYTES" in over.json()["detail"]
        near = {"claim_token": claim["claim_token"], "status": "completed", "output": "y" * (MiB - 1000)}
        assert http.post(finish, json=near).status_code == 200
        chunks = iter([b'{"direction": "streamed", ', b'"task_type": "run", "command": "true"}'])
        streamed = http.post("/api/agent/tasks", content=chunks, headers={"Content-Type": "application/json"})
        assert streamed.status_code == 201 and streamed.json()["direction"] == "streamed"
        assert http.get("/api/agent/tasks/count").json()["by_status"]["completed"] == 1


def test_a_runner_with_the_token_delivers_one_output_line_longer_than_the_body_limit(tmp_path: Path) -> None:
    """The runner's finish carries the output tail: one line with no newline must not make it too large to send."""
    home = tmp_path / "home"
    api = ServedApi(home, env={"COHERENCE_API_TOKEN": TOKEN, "COHERENCE_MAX_BODY_BYTES": str(128 * 1024)}).start()
    try:
        with ApiClient(api.url, token=TOKEN, retries=0) as client:
            command = f"{sys.executable} -c \"import sys; sys.stdout.write('x' * 300000 + 'END')\""
            task = client.create_task("one long line", TaskType.RUN, command=command)
            done = RunnerProcess(home, api.url, "--once", env={"COHERENCE_API_TOKEN": TOKEN}).run()
            assert done.returncode == 0, done.stdout + done.stderr
            finished = client.get_task(task.id)
            assert finished.status == TaskStatus.COMPLETED and finished.output.endswith("xxxEND")
    finally:
        api.stop()


def test_a_refused_host_is_logged_and_bounded(served_api: ServedApi) -> None:
    long_name = "a" * 300 + ".example"
    answer = httpx.get(f"{served_api.url}/api/agent/tasks/count", headers={"Host": long_name})
    assert answer.status_code == 421 and len(answer.text) < 300
    log = (served_api.home / "logs" / "api.log").read_text()
    assert "refused Host 'aaaa" in log and "COHERENCE_ALLOWED_HOSTS" in log and long_name not in log


def test_a_websocket_upgrade_meets_the_same_host_check(served_api: ServedApi) -> None:
    upgrade = (b"GET /api/agent/tasks HTTP/1.1\r\nHost: rebind.attacker.example\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert _raw_exchange(served_api.port, upgrade).startswith(b"HTTP/1.1 403")
    assert "refused Host 'rebind.attacker.example'" in (served_api.home / "logs" / "api.log").read_text()
