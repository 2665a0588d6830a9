"""Property-based fuzzing of the real API over its own OpenAPI schema (schemathesis), on both stores.

Every operation gets schema-valid and schema-violating examples, with the token and without it. Nothing may
answer 5xx, and every answer must be a status code and a content type the schema documents. Each example goes to an
API on SQLite and to one on PostgreSQL (making the examples is most of the cost: made once, they are checked on both
stores). The example count is bounded so the test takes about a minute and a half beside the rest of the suite (60
per operation and mode: 100 took three minutes once the API passed 50 operations); the seed is fixed so CI is
repeatable (``COHERENCE_FUZZ_SEED`` explores other inputs, ``COHERENCE_FUZZ_EXAMPLES`` changes the count: 500 for a
deep run by hand).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api import ServedApi
from tests.support.postgres import PostgresServer

TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = int(os.environ.get("COHERENCE_FUZZ_EXAMPLES", "60"))  # per operation and generation mode
# Without the token the guard answers 401 before anything else is read (the next test proves that for every
# operation), so a tenth of the examples covers that pass; the suite's time goes where inputs reach the handlers.
EXAMPLES_WITHOUT_TOKEN = max(EXAMPLES // 10, 1)
SEED = int(os.environ.get("COHERENCE_FUZZ_SEED", "11"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# What answers without the token (DESIGN section 6); the webhook answers 401 without its own secret.
PUBLIC_PATHS = frozenset({"/api/health", "/api/ready"})
MAX_WAIT_SECONDS = 0.2  # a claim's long poll, held short so the examples fit in the time budget


@dataclass
class Tally:
    """What one run saw: requests sent, server errors, and each distinct failure once (with a curl to replay)."""

    requests: int = 0
    server_errors: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def record(self, key: str, message: str) -> None:
        self.failures.setdefault(key, message)


def _short_poll(case: Any) -> Any:
    if isinstance(case.body, dict) and isinstance(case.body.get("wait_seconds"), (int, float)):
        case.body["wait_seconds"] = min(case.body["wait_seconds"], MAX_WAIT_SECONDS)
    return case


def fuzz_operation(
    operation: Any, mode: GenerationMode, send: Callable[[Any], list[tuple[str, requests.Response]]], tally: Tally,
    examples: int,
) -> None:
    """``examples`` cases of one operation in one generation mode; failures are tallied, not raised, so one run
    reports every distinct problem at once."""
    label = f"{operation.method.upper()} {operation.path}"

    @seed(SEED)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode).map(_short_poll))
    def run(case: Any) -> None:
        for store, response in send(case):
            tally.requests += 1
            if response.status_code >= 500:
                tally.server_errors += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as exc:  # one per distinct problem, operation and store
                tally.record(f"{store} {label} {response.status_code} {type(exc).__name__}",
                             f"{store}: {label}: {exc}")

    try:
        run()
    except Unsatisfiable:  # an operation without inputs has no schema-violating example
        assert mode is GenerationMode.NEGATIVE, label


def _fuzzed(home: Path, store_url: str) -> ServedApi:
    return ServedApi(home, env={"DATABASE_URL": store_url, "COHERENCE_API_TOKEN": TOKEN}).start()


@pytest.fixture
def fuzzed_api(tmp_path: Path, migrated_store_url: str) -> Iterator[ServedApi]:
    api = _fuzzed(tmp_path / "home", migrated_store_url)
    yield api
    api.stop()


@pytest.fixture
def fuzzed_apis(tmp_path: Path, migrated_sqlite_template: Path, postgres_server: PostgresServer
                ) -> Iterator[dict[str, ServedApi]]:
    """One API on each store, each on a store of its own at the newest revision."""
    sqlite = tmp_path / "coherence.db"
    shutil.copy(migrated_sqlite_template, sqlite)
    postgresql = postgres_server.new_database(migrated=True)
    apis = {"sqlite": _fuzzed(tmp_path / "sqlite", f"sqlite:///{sqlite}"),
            "postgresql": _fuzzed(tmp_path / "postgresql", postgresql)}
    yield apis
    for api in apis.values():
        api.stop()
    postgres_server.drop_database(postgresql)


def load_operations(api: ServedApi) -> list[Any]:
    document = httpx.get(f"{api.url}/openapi.json", headers=AUTH, timeout=30).json()
    operations = [result.ok() for result in schemathesis.openapi.from_dict(document).get_all_operations()]
    assert len(operations) >= 20, "the schema lost its operations"
    return operations


@pytest.mark.long
@pytest.mark.parametrize("with_token", [True, False], ids=["with-token", "without-token"])
def test_fuzz_every_operation_on_both_stores(fuzzed_apis: dict[str, ServedApi], with_token: bool) -> None:
    operations = load_operations(fuzzed_apis["sqlite"])
    assert [op.label for op in load_operations(fuzzed_apis["postgresql"])] == [op.label for op in operations]
    tally, started = Tally(), time.monotonic()
    sessions = {store: requests.Session() for store in fuzzed_apis}
    both = ThreadPoolExecutor(len(fuzzed_apis))  # at once: a claim's long poll waits on both stores together

    def call(store: str, case: Any) -> tuple[str, requests.Response]:
        return store, case.call(base_url=fuzzed_apis[store].url, session=sessions[store],
                                headers=AUTH if with_token else None, timeout=30)

    def send(case: Any) -> list[tuple[str, requests.Response]]:
        return list(both.map(call, fuzzed_apis, [case] * len(fuzzed_apis)))

    try:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(operation, mode, send, tally, EXAMPLES if with_token else EXAMPLES_WITHOUT_TOKEN)
    finally:
        both.shutdown()
        for session in sessions.values():
            session.close()
    summary = (f"token={with_token}: {tally.requests} requests over {len(operations)} operations and both stores in "
               f"{time.monotonic() - started:.1f} s, {tally.server_errors} server errors, "
               f"{len(tally.failures)} distinct failures")
    print(summary)
    assert not tally.failures, "\n".join([summary, *tally.failures.values()])


def test_without_the_token_every_protected_operation_answers_401(fuzzed_api: ServedApi) -> None:
    """With and without a well-formed body: the token is checked before anything else is looked at."""
    open_routes = []
    with httpx.Client(base_url=fuzzed_api.url, timeout=30) as http:
        for operation in load_operations(fuzzed_api):
            if operation.path in PUBLIC_PATHS:
                continue
            path = operation.path.replace("{task_id}", "1").replace("{ecosystem}", "npm").replace("{name}", "x")
            for body in (b"{}", b"\x00"):
                answer = http.request(operation.method.upper(), path, content=body,
                                      headers={"content-type": "application/json"})
                if answer.status_code != 401:
                    open_routes.append(f"{operation.method.upper()} {path} {body!r}: {answer.status_code}")
    assert not open_routes
