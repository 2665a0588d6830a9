"""The shared HTTP client against real loopback servers: typed errors, retries on 5xx and connection errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coherence_network.client import (
    ApiAuthError,
    ApiClient,
    ApiConflict,
    ApiNotFound,
    ApiUnavailable,
    ApiValidationError,
)
from coherence_network.contract import Task, TaskStatus
from tests.support.api import ServedApi
from tests.support.lossy_proxy import LossyProxy
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


def test_typed_errors_from_the_real_api(served_api: ServedApi) -> None:
    with ApiClient(served_api.url, token="", retries=0) as client:
        with pytest.raises(ApiNotFound):
            client.get_task(12345)
        with pytest.raises(ApiValidationError):
            client.create_task("", "run")
        task = client.create_task("x", "run", command="true")
        with pytest.raises(ApiConflict, match="pending"):
            client.decide(task.id, "yes", "test")
        assert client.claim("r", wait_seconds=0).id == task.id
        assert client.claim("r", wait_seconds=0) is None


def test_wrong_token_is_an_auth_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    api = ServedApi(tmp_path / "home", env={"COHERENCE_API_TOKEN": "right-token-of-16-chars"}).start()
    try:
        with ApiClient(api.url, token="wrong", retries=0) as client, pytest.raises(ApiAuthError):
            client.create_task("x", "run")
    finally:
        api.stop()


# --- lost responses (issue 10): a retry is safe, or it is not made -------------------------------------------------
@pytest.fixture
def lossy(served_api: ServedApi) -> Iterator[LossyProxy]:
    proxy = LossyProxy(served_api.port)
    yield proxy
    proxy.close()


def test_a_create_whose_response_is_lost_makes_one_task(lossy: LossyProxy, served_api: ServedApi) -> None:
    with ApiClient(lossy.url, token="", retries=3, backoff=0.01) as client:
        lossy.lose_next(2)
        task = client.create_task("only once", "run", command="true")
        assert lossy.lost == 2 and isinstance(task, Task) and task.status is TaskStatus.PENDING
    with ApiClient(served_api.url, token="", retries=0) as direct:
        assert direct.count_tasks().total == 1


def test_a_claim_whose_response_is_lost_gets_that_same_task(lossy: LossyProxy, served_api: ServedApi) -> None:
    with ApiClient(served_api.url, token="", retries=0) as direct:
        first, second = (direct.create_task(f"task {i}", "run", command="true") for i in range(2))
    with ApiClient(lossy.url, token="", retries=3, backoff=0.01) as client:
        lossy.lose_next(1)
        claimed = client.claim("runner-a", wait_seconds=0)
        assert lossy.lost == 1 and claimed is not None and claimed.id == first.id and claimed.claim_token == 1
        lossy.lose_next(1)
        done = client.finish(claimed.id, claimed.claim_token, TaskStatus.COMPLETED, exit_code=0, output="ok")
        assert lossy.lost == 2 and done.status is TaskStatus.COMPLETED
    with ApiClient(served_api.url, token="", retries=0) as direct:
        assert direct.get_task(second.id).status is TaskStatus.PENDING  # nobody holds task 2 unknowingly
        assert direct.count_tasks().by_status[TaskStatus.RUNNING] == 0


def test_an_unkeyed_write_whose_response_is_lost_is_not_repeated(lossy: LossyProxy, served_api: ServedApi) -> None:
    with ApiClient(served_api.url, token="", retries=0) as direct:
        task = direct.create_task("fails", "run", command="false")
        claimed = direct.claim("r", wait_seconds=0)
        direct.finish(task.id, claimed.claim_token, TaskStatus.FAILED, exit_code=1)
    with ApiClient(lossy.url, token="", retries=3, backoff=0.01) as client:
        lossy.lose_next(1)
        with pytest.raises(ApiUnavailable):
            client.retry_task(task.id)  # the retry happened; the client says it does not know, and stops
    with ApiClient(served_api.url, token="", retries=0) as direct:
        assert direct.get_task(task.id).status is TaskStatus.PENDING


def test_an_idempotency_key_given_with_curl_returns_the_first_task(served_api: ServedApi) -> None:
    import httpx

    body = {"direction": "scripted", "task_type": "run", "command": "true"}
    headers = {"Idempotency-Key": "nightly-2026-11-25"}
    first = httpx.post(f"{served_api.url}/api/agent/tasks", json=body, headers=headers)
    again = httpx.post(f"{served_api.url}/api/agent/tasks", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = httpx.post(f"{served_api.url}/api/agent/tasks", json={**body, "command": "false"}, headers=headers)
    assert other.status_code == 409 and "already used" in other.json()["detail"]


def test_another_servers_error_page_is_described_not_echoed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A foreign server on the port answers with HTML: the error names what came back, without its markup."""
    import subprocess
    import sys

    foreign = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"], cwd=tmp_path,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert foreign.stdout is not None
        port = int(foreign.stdout.readline().split(" port ")[1].split()[0])
        with ApiClient(f"http://127.0.0.1:{port}", token="", retries=0) as client, pytest.raises(ApiNotFound) as caught:
            client.fatal_issues()
        assert caught.value.detail.startswith("not an answer of this API (text/html, ")
        assert "<" not in str(caught.value)
    finally:
        foreign.kill()
        foreign.wait(10)
