"""Hostile input over real HTTP, on SQLite and PostgreSQL: every bad value is refused at the edge with a 4xx that
clients do not retry, nothing accepted can break a later read, agent output is kept whatever bytes it holds, and
errors and log reads stay bounded in size and memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.store.db import create_store_engine, migrate
from coherence_network.store.errors import store_error_status
from coherence_network.store.schema import UTCDateTime, runners
from tests.support.api import ApiProcess, ServedApi
from tests.support.net import free_port

TASK = {"direction": "say hello", "task_type": "run", "command": "echo hello"}
RUNNER = {"runner_id": "host:1", "host": "host", "pid": 1, "version": "0.1.0"}
BEYOND = [2**31, 2**63, 2**70]  # past PostgreSQL's INTEGER, past SQLite's and PostgreSQL's 64 bits


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


@pytest.fixture
def api(tmp_path: Path, migrated_store_url: str) -> Iterator[ServedApi]:
    served = ServedApi(tmp_path / "home", env={"DATABASE_URL": migrated_store_url}).start()
    yield served
    served.stop()


@pytest.fixture
def http(api: ServedApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=60) as client:
        yield client


@pytest.fixture
def api_process_on_store(tmp_path: Path, migrated_store_url: str) -> Iterator[ApiProcess]:
    """A process, for what measures its memory."""
    process = ApiProcess(tmp_path / "home", env={"DATABASE_URL": migrated_store_url}).start()
    yield process
    process.stop()


def send(http: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    """JSON the way a hostile client writes it: ``\\ud800`` escapes stay lone surrogates once parsed."""
    return http.request(method, path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def running_task(http: httpx.Client) -> dict[str, Any]:
    http.post("/api/agent/tasks", json=TASK).raise_for_status()
    claim = http.post("/api/agent/tasks/claim", json={"runner_id": "r"})
    assert claim.status_code == 200
    return claim.json()


def test_deep_json_is_refused_and_listings_stay_readable(http: httpx.Client) -> None:
    assert send(http, "POST", "/api/agent/tasks", {**TASK, "context": nested(300)}).status_code == 422
    assert send(http, "POST", "/api/agent/runners/heartbeat", {**RUNNER, "info": nested(300)}).status_code == 422
    component = {"component": "project_manager", "host": "h", "pid": 1, "info": nested(300)}
    assert send(http, "POST", "/api/agent/components/heartbeat", component).status_code == 422
    issue = {"rule": "r", "severity": "high", "message": "m", "detail": nested(300)}
    assert send(http, "POST", "/api/agent/monitor-issues", {"host": "h", "issues": [issue]}).status_code == 422
    big = {"blob": ["x" * 1000] * 200}  # 200 KB of JSON: past the free-form JSON limit
    assert send(http, "POST", "/api/agent/tasks", {**TASK, "context": big}).status_code == 422
    # What is accepted comes back, and every listing that includes it answers
    assert send(http, "POST", "/api/agent/tasks", {**TASK, "context": nested(20)}).status_code == 201
    assert send(http, "POST", "/api/agent/runners/heartbeat", {**RUNNER, "info": nested(20)}).status_code == 200
    assert send(http, "POST", "/api/agent/monitor-issues",
                {"host": "h", "issues": [{**issue, "detail": nested(20)}]}).status_code == 200
    for path in ("/api/agent/tasks", "/api/agent/runners", "/api/agent/pipeline-status", "/api/agent/monitor-issues"):
        assert http.get(path).status_code == 200, path
    assert http.get("/api/agent/tasks").json()["items"][0]["context"] == nested(20)


@pytest.mark.parametrize("bad", ["nul\x00here", "lone \ud800 surrogate"])
def test_nul_and_lone_surrogates_in_typed_fields_are_422(http: httpx.Client, bad: str) -> None:
    refused = [
        ("POST", "/api/agent/tasks", {**TASK, "direction": bad}),
        ("POST", "/api/agent/tasks", {**TASK, "command": bad}),
        ("POST", "/api/agent/tasks", {**TASK, "context": {"k": bad}}),
        ("POST", "/api/agent/tasks", {**TASK, "context": {bad: 1}}),
        ("POST", "/api/agent/tasks/claim", {"runner_id": bad}),
        ("POST", "/api/agent/runners/heartbeat", {**RUNNER, "runner_id": bad}),
        ("POST", "/api/agent/runners/heartbeat", {**RUNNER, "host": bad}),
        ("POST", "/api/agent/components/heartbeat", {"component": bad, "host": "h", "pid": 1}),
        ("POST", "/api/agent/monitor-issues", {"host": "h", "issues": [{"rule": "r", "severity": "high",
                                                                         "message": bad}]}),
        ("POST", "/api/agent/fatal-issues", {"component": "c", "reason": bad, "host": "h"}),
    ]
    for method, path, body in refused:
        answer = send(http, method, path, body)
        assert answer.status_code == 422, (path, body, answer.status_code, answer.text[:300])
        assert "\ud800" not in answer.text
    task = http.post("/api/agent/tasks", json=TASK).json()
    claim = http.post("/api/agent/tasks/claim", json={"runner_id": "r"}).json()
    http.post(f"/api/agent/tasks/{task['id']}/finish",
              json={"claim_token": claim["claim_token"], "status": "needs_decision", "decision_prompt": "go?"})
    for body in ({"decision": bad}, {"decision": "yes", "decided_by": bad}):
        assert send(http, "PATCH", f"/api/agent/tasks/{task['id']}", body).status_code == 422
    assert http.get("/api/projects", params={"q": "a\x00b"}).status_code == 422
    assert http.get("/api/projects/npm/a%00b").status_code == 422
    assert http.get("/api/agent/tasks/count").json()["total"] == 1


def test_agent_output_with_nul_and_lone_surrogates_is_kept_and_the_log_says_so(
    http: httpx.Client, api: ServedApi
) -> None:
    claim = running_task(http)
    beat = send(http, "POST", f"/api/agent/tasks/{claim['id']}/heartbeat",
                {"claim_token": claim["claim_token"], "current_step": "step\x00one"})
    assert beat.status_code == 200 and beat.json()["current_step"] == "step\ufffdone"
    finished = send(http, "POST", f"/api/agent/tasks/{claim['id']}/finish",
                    {"claim_token": claim["claim_token"], "status": "needs_decision", "exit_code": 0,
                     "output": "binary\x00out \ud800put", "decision_prompt": "ok\x00?"})
    assert finished.status_code == 200, finished.text
    stored = http.get(f"/api/agent/tasks/{claim['id']}").json()
    assert stored["output"] == "binary\ufffdout \ufffdput" and stored["decision_prompt"] == "ok\ufffd?"
    log = (api.home / "logs" / "api.log").read_text()
    assert f"task {claim['id']}" in log and "replaced" in log


@pytest.mark.parametrize("number", BEYOND)
def test_integers_beyond_the_store_are_422(http: httpx.Client, number: int) -> None:
    claim = running_task(http)
    tid, token = claim["id"], claim["claim_token"]
    runner = {**RUNNER, "pid": number}
    answers = {
        "get": http.get(f"/api/agent/tasks/{number}"),
        "log": http.get(f"/api/agent/tasks/{number}/log"),
        "patch": http.patch(f"/api/agent/tasks/{number}", json={"decision": "y"}),
        "offset": http.get("/api/agent/tasks", params={"offset": number}),
        "projects offset": http.get("/api/projects", params={"offset": number}),
        "priority": http.post("/api/agent/tasks", json={**TASK, "priority": number}),
        "heartbeat id": http.post(f"/api/agent/tasks/{number}/heartbeat", json={"claim_token": token}),
        "heartbeat token": http.post(f"/api/agent/tasks/{tid}/heartbeat", json={"claim_token": number}),
        "finish token": http.post(f"/api/agent/tasks/{tid}/finish", json={"claim_token": number, "status": "failed"}),
        "exit code": http.post(f"/api/agent/tasks/{tid}/finish",
                               json={"claim_token": token, "status": "failed", "exit_code": number}),
        "runner pid": http.post("/api/agent/runners/heartbeat", json=runner),
        "component pid": http.post("/api/agent/components/heartbeat", json={"component": "c", "host": "h",
                                                                              "pid": number}),
    }
    wrong = {name: a.status_code for name, a in answers.items() if a.status_code != 422}
    assert not wrong
    assert http.get(f"/api/agent/tasks/{tid}").json()["status"] == "running"
    assert http.get("/api/agent/runners").json()["items"] == []
    # the largest value each column holds is accepted
    largest = 2**31 - 1
    assert http.get(f"/api/agent/tasks/{largest}").status_code == 404
    finish = {"claim_token": token, "status": "failed", "exit_code": -(2**31)}
    assert http.post(f"/api/agent/tasks/{tid}/finish", json=finish).json()["exit_code"] == -(2**31)


def test_metrics_answer_on_a_fresh_store(http: httpx.Client) -> None:
    assert http.get("/api/agent/metrics").status_code == 200
    http.post("/api/agent/tasks", json=TASK)
    assert http.get("/api/agent/metrics").status_code == 200
    assert http.get("/api/agent/effectiveness").status_code == 200


def test_a_422_echoes_only_a_bounded_excerpt(http: httpx.Client) -> None:
    huge = "x" * 300_000  # within any sane body limit, far beyond what an error should quote
    answers = [
        http.post("/api/agent/tasks", json={**TASK, "direction": huge}),
        http.post("/api/agent/tasks", json={**TASK, "task_type": huge}),
        http.post("/api/agent/tasks", json={**TASK, huge: 1}),
        http.post("/api/agent/tasks", json=[huge] * 3),
        http.post("/api/agent/tasks", json={**TASK, "context": {"k": [huge[:1000]] * 100}}),
        http.post("/api/agent/tasks", content=b"{" + huge.encode(), headers={"content-type": "application/json"}),
    ]
    for answer in answers:
        assert answer.status_code == 422 and len(answer.content) < 4096, (answer.status_code, len(answer.content))
    detail = answers[0].json()["detail"][0]
    assert detail["loc"] == ["body", "direction"] and detail["input"].startswith("xxx")


def test_times_without_a_zone_or_out_of_range_are_422(http: httpx.Client) -> None:
    issue = {"rule": "r", "severity": "high", "message": "m"}
    for first_seen in ("2026-01-01T00:00:00", "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00"):
        body = {"host": "h", "issues": [{**issue, "first_seen": first_seen}]}
        assert http.post("/api/agent/monitor-issues", json=body).status_code == 422, first_seen
        fatal = {"component": "c", "reason": "r", "host": "h", "at": first_seen}
        assert http.post("/api/agent/fatal-issues", json=fatal).status_code == 422, first_seen
    assert http.get("/api/agent/monitor-issues").json()["count"] == 0


def test_lax_coercions_that_make_nonsense_are_422(http: httpx.Client) -> None:
    """true/false are not numbers and a number is not a time, though pydantic would read them as 1/0 and as
    seconds since 1970."""
    for field in ("priority", "max_attempts", "timeout_seconds"):
        assert http.post("/api/agent/tasks", json={**TASK, field: True}).status_code == 422, field
    assert http.post("/api/agent/tasks", json={**TASK, "priority": False}).status_code == 422
    for claim in ({"wait_seconds": False}, {"max_tasks": True}, {"lease_seconds": True}):
        assert http.post("/api/agent/tasks/claim", json={"runner_id": "r", **claim}).status_code == 422, claim
    assert http.get("/api/agent/tasks/count").json()["total"] == 0  # nothing was made, nothing claimed
    task = running_task(http)
    for beat in ({"claim_token": True}, {"claim_token": task["claim_token"], "progress_pct": True}):
        assert http.post(f"/api/agent/tasks/{task['id']}/heartbeat", json=beat).status_code == 422, beat
    ending = {"claim_token": task["claim_token"], "status": "failed", "exit_code": False}
    assert http.post(f"/api/agent/tasks/{task['id']}/finish", json=ending).status_code == 422
    assert http.post("/api/agent/runners/heartbeat", json={**RUNNER, "pid": True}).status_code == 422
    for when in ("0.5", "1700000000", "-1", "1e9"):
        assert http.get("/api/agent/tasks", params={"finished_after": when}).status_code == 422, when
    issue = {"rule": "r", "severity": "high", "message": "m", "first_seen": 1700000000}
    assert http.post("/api/agent/monitor-issues", json={"host": "h", "issues": [issue]}).status_code == 422
    assert http.post("/api/agent/fatal-issues", json={"component": "c", "reason": "r", "host": "h",
                                                      "at": "1700000000"}).status_code == 422
    # What people send stays accepted: a number as text (the console's forms) and ISO 8601 times.
    assert http.post("/api/agent/tasks", json={**TASK, "priority": "5"}).json()["priority"] == 5
    assert http.get("/api/agent/tasks", params={"finished_after": "2026-01-01T00:00:00Z"}).status_code == 200
    assert http.get("/api/agent/tasks", params={"finished_after": "2026-01-01"}).status_code == 422  # no zone


def _raised(engine: sa.Engine, statement: sa.Executable, params: dict[str, Any]) -> sa.exc.StatementError:
    with pytest.raises(sa.exc.StatementError) as caught, engine.begin() as conn:
        conn.execute(statement, params)
    return caught.value


def test_store_errors_are_mapped_by_whose_fault_they_are(store_url: str) -> None:
    """Real errors from the real stores: what the request caused is a 4xx, an unavailable store is 503."""
    engine = create_store_engine(store_url)
    migrate(engine)
    row = {"id": "r", "host": "h", "pid": 1, "version": "v", "first_seen": utcnow(), "last_seen": utcnow()}
    with engine.begin() as conn:
        conn.execute(runners.insert(), row)
    assert store_error_status(_raised(engine, runners.insert(), row)) == 409  # a constraint the request broke
    naive = sa.select(sa.bindparam("t", type_=UTCDateTime))
    assert store_error_status(_raised(engine, naive, {"t": utcnow().replace(tzinfo=None)})) == 422
    if engine.dialect.name == "postgresql":
        assert store_error_status(_raised(engine, runners.update().values(host="a\x00b"), {})) == 422
        missing = create_store_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    else:
        missing = create_store_engine(f"sqlite:///{store_url.removeprefix('sqlite:///')}.missing/x.db")
    assert store_error_status(_raised(missing, sa.select(runners), {})) == 503
    assert store_error_status(_raised(engine, sa.text("SELECT * FROM no_such_table"), {})) == 503
    engine.dispose()


def test_log_reads_are_bounded_in_memory(api_process_on_store: ApiProcess) -> None:
    api = api_process_on_store
    with httpx.Client(base_url=api.url, timeout=60) as http:
        _log_reads_are_bounded_in_memory(http, api)


def _log_reads_are_bounded_in_memory(http: httpx.Client, api: ApiProcess) -> None:
    task = http.post("/api/agent/tasks", json=TASK).json()
    path = api.home / "logs" / f"task_{task['id']}.log"
    line = "a log line of some length, repeated to make a large file " * 2 + "\n"
    with path.open("w") as handle:
        for _ in range(100):
            handle.write(line * 5000)  # 100 x 590 KB: a 59 MB log
    size = path.stat().st_size
    with path.open("a") as handle:
        handle.write("the end\n")
    before = _peak_rss_bytes(api)
    tail = http.get(f"/api/agent/tasks/{task['id']}/log", params={"tail": 2})
    assert tail.status_code == 200 and tail.text == line + "the end\n"
    whole = http.get(f"/api/agent/tasks/{task['id']}/log")
    assert whole.status_code == 200 and whole.text.endswith("the end\n")
    cap = int(whole.headers["x-log-cap-bytes"])
    assert len(whole.content) <= cap + 512 < size and whole.headers["x-log-truncated"] == "true"
    assert whole.headers["x-log-size-bytes"] == str(size + len("the end\n"))
    assert _peak_rss_bytes(api) - before < 40 * 2**20


def _peak_rss_bytes(api: ApiProcess) -> int:
    """The API process's peak resident memory (VmHWM), which no short spike escapes."""
    assert api.proc is not None
    for line in Path(f"/proc/{api.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")
