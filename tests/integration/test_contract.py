"""The typed client and the API's OpenAPI document hold together: every endpoint the client calls is documented with
the request model the client builds its body from, every request body the API accepts is a model of the contract
(coherence_network.request_bodies), every endpoint under /api/agent has a client method (or a reason why not), and
every client method, run against the API in this process, sends what its endpoint documents and is answered 2xx."""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

import coherence_network
from coherence_network import request_bodies
from coherence_network.api.app import create_app
from coherence_network.client import ApiClient
from coherence_network.contract import Component, Severity, TaskStatus, TaskType
from coherence_network.endpoints import ENDPOINTS, Endpoint
from coherence_network.settings import Settings

# Endpoints under /api/agent deliberately without a client method, and why.
NOT_FOR_CLIENTS = {
    ("POST", "/api/agent/telegram/webhook"): "Telegram itself posts updates here, no component does",
}
# The client's plumbing, not endpoints of their own.
CORE_METHODS = {"request", "call", "get", "post", "close"}


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(coherence_home=tmp_path_factory.mktemp("contract") / "home")
    with TestClient(create_app(settings)) as http:
        yield http


@pytest.fixture(scope="module")
def openapi(app_client: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = app_client.get("/openapi.json").json()
    return document


def _documented(schema: dict[str, Any]) -> Any:
    """A JSON schema as the OpenAPI document spells it: FastAPI leaves out a default of null."""
    if isinstance(schema, dict):
        return {k: _documented(v) for k, v in schema.items() if not (k == "default" and v is None)}
    if isinstance(schema, list):
        return [_documented(v) for v in schema]
    return schema


def _model_schemas(model: type[BaseModel]) -> dict[str, Any]:
    """The model's schema and those of the models it holds, by name, as components of an OpenAPI document."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    held = schema.pop("$defs", {})
    return {model.__name__: _documented(schema), **{name: _documented(s) for name, s in held.items()}}


def _body_schema(operation: dict[str, Any]) -> dict[str, Any] | None:
    body = operation.get("requestBody")
    return None if body is None else body["content"]["application/json"]["schema"]


REQUEST_MODELS = {name: model for name, model in vars(request_bodies).items() if inspect.isclass(model)
                  and issubclass(model, BaseModel) and model.__module__ == request_bodies.__name__}


def test_every_client_endpoint_is_documented_with_the_request_model_the_client_sends(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    for endpoint in ENDPOINTS:
        operation = openapi["paths"].get(endpoint.path, {}).get(endpoint.method.lower())
        assert operation is not None, f"{endpoint} is not in the API's OpenAPI document"
        schema = _body_schema(operation)
        if endpoint.body is None:
            assert schema is None, f"{endpoint} documents a body the client does not send"
            continue
        assert schema == {"$ref": f"#/components/schemas/{endpoint.body.__name__}"}, endpoint
        for name, expected in _model_schemas(endpoint.body).items():
            assert _documented(components[name]) == expected, f"{endpoint}: {name} differs from the contract's"


def test_every_request_body_the_api_accepts_is_a_model_of_the_contract(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    bodies = 0
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            schema = _body_schema(operation)
            if schema is None:
                continue
            bodies += 1
            if "$ref" in schema:
                name = schema["$ref"].rsplit("/", 1)[1]
                assert name in REQUEST_MODELS, f"{method.upper()} {path} takes {name}, not a request_bodies model"
                assert _documented(components[name]) == _model_schemas(REQUEST_MODELS[name])[name]
            else:  # documented inline (the Telegram webhook reads its body only once the secret is checked)
                inline = _documented(schema)
                assert any(inline == _model_schemas(model)[name] for name, model in REQUEST_MODELS.items()), \
                    f"{method.upper()} {path}: its body is not a request_bodies model"
    assert bodies >= 12


def test_every_agent_endpoint_has_a_client_method_or_a_reason(openapi: dict[str, Any]) -> None:
    documented = {(method.upper(), path) for path, operations in openapi["paths"].items()
                  for method in operations if path.startswith("/api/agent/")}
    called = {(e.method, e.path) for e in ENDPOINTS}
    assert documented - called == set(NOT_FOR_CLIENTS), "an /api/agent endpoint with no client method and no reason"
    assert not called & set(NOT_FOR_CLIENTS)
    assert len(called) == len(ENDPOINTS), "two client endpoints name the same route"


def _template(endpoint: Endpoint) -> re.Pattern[str]:
    """The endpoint's path as a pattern: its ``{task_id}`` is a number, as the API's routes read it (a
    ``{task_type}`` a word)."""
    path = re.escape(endpoint.path).replace(r"\{task_type\}", "[a-z]+").replace(r"\{item\}", "[a-z0-9.-]+")
    return re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[0-9]+", path) + "$")


def _drive(client: ApiClient) -> dict[str, Callable[[], Any]]:
    """A call of every client method, in an order that makes each legal (a claim after a create...)."""
    seen: dict[str, Any] = {}

    def keep(name: str, value: Any) -> Any:
        seen[name] = value
        return value

    def claimed_pair() -> Any:
        return keep("pair", client.claim_many("r1", 2, types=[TaskType.RUN]))

    return {
        "create_task": lambda: keep("one", client.create_task("one", TaskType.RUN, priority=1, context={"k": None})),
        "create_tasks": lambda: client.create_tasks([{"direction": "two", "task_type": TaskType.RUN},
                                                     {"direction": "three", "task_type": "spec", "priority": -1,
                                                      "context": {"item": "contract-item-1a2b3c4d"}}]),
        "get_task": lambda: client.get_task(seen["one"].id),
        "list_tasks": lambda: client.list_tasks(status=TaskStatus.PENDING, limit=10, sort="-priority"),
        "count_tasks": client.count_tasks,
        "claim": lambda: keep("claimed", client.claim("r1", types=[TaskType.RUN], lease_seconds=30)),
        "heartbeat": lambda: client.heartbeat(seen["claimed"].id, seen["claimed"].claim_token, progress_pct=50,
                                              current_step="half way"),
        "finish": lambda: client.finish(seen["claimed"].id, seen["claimed"].claim_token, TaskStatus.NEEDS_DECISION,
                                        decision_prompt="Ship it?", exit_code=0),
        "decide": lambda: client.decide(seen["claimed"].id, "yes", "test:contract"),
        "claim_many": claimed_pair,
        "claim_held": lambda: client.claim_held("r1", 2, types=[TaskType.RUN], wait_seconds=0.05),
        "finish_and_claim": lambda: keep("next", client.finish_and_claim(
            seen["pair"][0].id, seen["pair"][0].claim_token, TaskStatus.FAILED, runner_id="r1", types=["spec"],
            exit_code=1, output="it broke\n")),
        "retry_task": lambda: client.retry_task(seen["pair"][0].id),
        "task_log": lambda: client.task_log(seen["pair"][0].id, tail=5),
        "pipeline_status": client.pipeline_status,
        "task_metrics": client.task_metrics,
        "effectiveness": client.effectiveness,
        "runner_heartbeat": lambda: client.runner_heartbeat("r1", "host", 1, "1.0", {"workers": 1}),
        "runners": client.runners,
        "component_heartbeat": lambda: client.component_heartbeat(Component.MONITOR, "host", 1, "1.0",
                                                                  {"open_issues": []}),
        "report_monitor_issues": lambda: client.report_monitor_issues("host", [{
            "rule": "disk_low", "severity": Severity.HIGH, "message": "1 MiB free", "action": "free space",
            "runbook": "#tests-and-cleanup", "detail": {"free_bytes": 1}, "first_seen": "2026-01-01T00:00:00+00:00"}]),
        "monitor_issues": client.monitor_issues,
        "report_fatal_issue": lambda: client.report_fatal_issue(
            component=Component.RUNNER, reason="crashed 5 times", detail="Traceback", recovery_tried="5 restarts",
            host="host", at="2026-01-01T00:00:00+00:00"),
        "fatal_issues": client.fatal_issues,
        "clear_fatal_issues": lambda: client.clear_fatal_issues("2026-01-02T00:00:00+00:00"),
        "health": client.health,
        "ready": client.ready,
        "version": client.version,
        "prune": lambda: client.prune(dry_run=True),
        "pause": lambda: client.pause("test:contract", "hold the specs", task_type=TaskType.SPEC),
        "pauses": client.pauses,
        "resume": lambda: client.resume("test:contract", task_type=TaskType.SPEC),
        "bulk_preview": lambda: keep("bulk", client.bulk_preview("retry", status=TaskStatus.FAILED,
                                                                 type=TaskType.RUN)),
        "bulk_act": lambda: client.bulk_act("retry", seen["bulk"].token, "contract", status=TaskStatus.FAILED,
                                            type=TaskType.RUN),
        "note_restart": lambda: client.note_restart("monitor", "contract", "host"),
        "audit": lambda: client.audit(limit=5, before_id=10**6, actor="test:contract", channel="api", action="pause",
                                      task_id=None, since="2026-01-01T00:00:00+00:00", until="2099-01-01T00:00:00Z"),
        "cancel": lambda: client.cancel(seen["one"].id, "not needed", by="test:contract"),
        "set_policy": lambda: client.set_policy(TaskType.SPEC, by="test:contract", max_running=2),
        "policies": client.policies,
        "get_item": lambda: client.get_item("contract-item-1a2b3c4d"),
        "list_items": lambda: client.list_items(limit=5, offset=0),
        "caps": client.caps,
        "set_caps": lambda: client.set_caps(by="test:contract", day=5.0, task=0.5),
        "spend": lambda: client.spend(item="an-item", days=3),
    }


@pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument with the TestClient")
def test_every_client_method_sends_what_its_endpoint_documents(app_client: TestClient) -> None:
    sent: list[httpx.Request] = []
    answers: list[httpx.Response] = []
    app_client.event_hooks = {"request": [sent.append], "response": [answers.append]}
    try:
        client = ApiClient(http=app_client, retries=0)
        drive = _drive(client)
        public = {name for name, _ in inspect.getmembers(ApiClient, inspect.isfunction) if not name.startswith("_")}
        assert set(drive) == public - CORE_METHODS, "a client method this test does not call (or calls no more)"
        for name, call in drive.items():
            before = len(sent)
            call()
            assert len(sent) == before + 1, f"{name} sent {len(sent) - before} requests"
    finally:
        app_client.event_hooks = {"request": [], "response": []}
    assert all(answer.is_success for answer in answers), [a.status_code for a in answers]
    used: set[Endpoint] = set()
    for request in sent:
        matching = [e for e in ENDPOINTS if e.method == request.method and _template(e).match(request.url.path)]
        assert len(matching) == 1, f"{request.method} {request.url.path} is not one client endpoint"
        endpoint = matching[0]
        used.add(endpoint)
        if endpoint.body is None:
            assert not request.content, f"{endpoint} sent a body"
        else:
            endpoint.body.model_validate(json.loads(request.content))  # what the client sent is the model's
    assert used == set(ENDPOINTS), f"never called: {', '.join(map(str, set(ENDPOINTS) - used))}"


def test_a_field_the_request_model_lacks_is_refused_before_sending(app_client: TestClient) -> None:
    with pytest.raises(TypeError, match="TaskCreate has no field colour"):
        ApiClient(http=app_client, retries=0).create_task("d", TaskType.RUN, colour="red")


def test_no_path_of_the_api_is_spelled_outside_the_client_and_the_api() -> None:
    """Components call the API through the typed client only: a path of it in their code would bypass the contract."""
    root = Path(coherence_network.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root).as_posix()
        if where in ("client.py", "endpoints.py") or where.startswith("api/"):
            continue
        found += [f"{where}:{node.lineno} {node.value}" for node in ast.walk(ast.parse(path.read_text("utf-8")))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and re.match(r"/api/[a-z]", node.value)]
    assert found == []
