"""The shared HTTP client against real loopback servers: typed errors, retries on 5xx and connection errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coherence_network.client import ApiAuthError, ApiClient, ApiConflict, ApiNotFound, ApiUnavailable, ApiValidationError
from tests.support.api import ApiProcess
from tests.support.net import free_port


class FlakyServer:
    """Answers 503 for the first ``failures`` requests, then 200 with a count; records each request."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.seen.append(self.headers.get("Authorization", ""))
                status = 503 if len(outer.seen) <= outer.failures else 200
                body = json.dumps({"detail": "busy"} if status == 503 else {"n": len(outer.seen)}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    server = FlakyServer(failures=2)
    yield server
    server.server.shutdown()


def test_5xx_is_retried_until_it_succeeds(flaky: FlakyServer) -> None:
    with ApiClient(flaky.url, token="t0k", retries=3, backoff=0.01) as client:
        assert client.get("/anything") == {"n": 3}
    assert flaky.seen == ["Bearer t0k"] * 3


def test_5xx_after_every_retry_is_api_unavailable(flaky: FlakyServer) -> None:
    with ApiClient(flaky.url, token="", retries=1, backoff=0.01) as client, pytest.raises(ApiUnavailable) as caught:
        client.get("/anything")
    assert caught.value.status == 503 and len(flaky.seen) == 2


def test_connection_refused_is_api_unavailable() -> None:
    with ApiClient(f"http://127.0.0.1:{free_port()}", token="", retries=2, backoff=0.01) as client:
        with pytest.raises(ApiUnavailable, match="ConnectError"):
            client.count_tasks()


def test_typed_errors_from_the_real_api(api_process: ApiProcess) -> None:
    with ApiClient(api_process.url, token="", retries=0) as client:
        with pytest.raises(ApiNotFound):
            client.get_task(12345)
        with pytest.raises(ApiValidationError):
            client.create_task("", "run")
        task = client.create_task("x", "run", command="true")
        with pytest.raises(ApiConflict, match="pending"):
            client.decide(task["id"], "yes", "test")
        assert client.claim("r", wait_seconds=0)["id"] == task["id"]
        assert client.claim("r", wait_seconds=0) is None


def test_wrong_token_is_an_auth_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    api = ApiProcess(tmp_path / "home", env={"COHERENCE_API_TOKEN": "right"}).start()
    try:
        with ApiClient(api.url, token="wrong", retries=0) as client, pytest.raises(ApiAuthError):
            client.create_task("x", "run")
    finally:
        api.stop()
