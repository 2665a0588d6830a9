"""The HTTP client every component uses to talk to the API: base URL, token, timeouts, safe retries, typed errors
and typed results (the models of coherence_network.contract).

A retry must be safe to repeat. A request that never reached the API (connection refused) is always retried; one
that may have reached it (a timeout, a 5xx) is retried only when repeating it cannot do the work twice: reads, and
writes that carry a key - a create its Idempotency-Key, a claim its request id, a heartbeat or a finish its claim
token, a decision its own value.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from typing import Any

import httpx

from coherence_network.contract import (
    FatalIssueList,
    FinishAndClaim,
    MonitorIssueList,
    PipelineStatus,
    Runner,
    Task,
    TaskCount,
    TaskList,
    TaskPage,
    TaskStatus,
)
from coherence_network.errors import CoherenceError
from coherence_network.settings import Settings, get_settings

log = logging.getLogger("coherence.client")


class ApiError(CoherenceError):
    """The API answered with an error status; ``status`` and ``detail`` say which and why."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = "") -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{method} {path} -> {status}: {detail}")


class ApiUnavailable(ApiError):
    """The API could not be reached (connection error, timeout or 5xx) after every retry."""


class ApiAuthError(ApiError):
    """401: missing or wrong token."""


class ApiNotFound(ApiError):
    """404: no such resource."""


class ApiConflict(ApiError):
    """409: the operation is not legal in the resource's current state."""


class ApiValidationError(ApiError):
    """422: the request was malformed."""


_BY_STATUS: dict[int, type[ApiError]] = {401: ApiAuthError, 404: ApiNotFound, 409: ApiConflict, 422: ApiValidationError}
_REPEATABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})  # idempotent by HTTP's definition
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)  # the API never saw the request: always safe to send again


class ApiClient:
    """A small synchronous client. Retries (exponential backoff, jitter) only what is safe to repeat."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or get_settings()
        self.base_url = (base_url or settings.agent_api_base).rstrip("/")
        self.retries = settings.coherence_http_retries if retries is None else retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = settings.coherence_http_timeout if timeout is None else timeout
        token = settings.coherence_api_token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- core -----------------------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
        timeout: float | None = None, retries: int | None = None, keyed: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request; return the response for 2xx, raise a typed ApiError otherwise.

        ``keyed``: this write carries a key that makes repeating it safe, so it is retried like a read."""
        attempts = (self.retries if retries is None else retries) + 1
        repeatable = keyed or method.upper() in _REPEATABLE_METHODS
        last: ApiError | None = None
        for attempt in range(attempts):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                log.debug("retrying %s %s in %.2fs (%s)", method, path, delay, last)
                time.sleep(delay)
            try:
                response = self._http.request(
                    method, path, json=json, params=params, timeout=timeout or self.timeout, headers=headers
                )
            except httpx.TransportError as exc:
                last = ApiUnavailable(0, f"{type(exc).__name__}: {exc}", method, path)
                if repeatable or isinstance(exc, _NOT_SENT):
                    continue
                raise last from exc
            if response.status_code >= 500:
                last = ApiUnavailable(response.status_code, _detail(response), method, path)
                if repeatable:
                    continue
                raise last
            if response.status_code >= 400:
                cls = _BY_STATUS.get(response.status_code, ApiError)
                raise cls(response.status_code, _detail(response), method, path)
            return response
        assert last is not None
        raise last

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        """POST; retried only with ``keyed=True`` (the caller vouches that repeating it is safe)."""
        response = self.request("POST", path, json=body, **kwargs)
        return response.json() if response.content else None

    # --- tasks ----------------------------------------------------------------------------------------------
    def create_task(self, direction: str, task_type: str, *, idempotency_key: str | None = None,
                    **fields: Any) -> Task:
        """Create a task. One key per logical create (a fresh one unless given), so a retry never makes two."""
        key = idempotency_key or uuid.uuid4().hex
        body = {"direction": direction, "task_type": str(task_type), **fields}
        response = self.request("POST", "/api/agent/tasks", json=body, keyed=True, headers={"Idempotency-Key": key})
        return Task.model_validate(response.json())

    def create_tasks(self, items: list[dict[str, Any]]) -> list[Task]:
        """Create many tasks in one call and one transaction, in order. Every item gets an idempotency key (a fresh
        one unless it has its own), so a retried batch returns the tasks the first one made."""
        body = {"tasks": [{**item, "task_type": str(item["task_type"]),
                           "idempotency_key": item.get("idempotency_key") or uuid.uuid4().hex} for item in items]}
        return TaskList.model_validate(self.post("/api/agent/tasks/batch", body, keyed=True)).tasks

    def get_task(self, task_id: int) -> Task:
        return Task.model_validate(self.get(f"/api/agent/tasks/{task_id}"))

    def list_tasks(self, **filters: Any) -> TaskPage:
        return TaskPage.model_validate(self.get("/api/agent/tasks", **filters))

    def count_tasks(self) -> TaskCount:
        return TaskCount.model_validate(self.get("/api/agent/tasks/count"))

    def claim(
        self, runner_id: str, *, types: list[str] | None = None, wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> Task | None:
        """Claim a task, waiting up to ``wait_seconds`` for one; None when none came.

        The claim carries a fresh request id, so a retry after a lost response gets the task this claim already
        got instead of leaving it claimed by a runner that never learns of it."""
        body = _claim_body(runner_id, types, wait_seconds, lease_seconds)
        response = self.request("POST", "/api/agent/tasks/claim", json=body, timeout=self.timeout + wait_seconds,
                                keyed=True)
        return None if response.status_code == 204 else Task.model_validate(response.json())

    def claim_many(
        self, runner_id: str, max_tasks: int, *, types: list[str] | None = None, wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Task]:
        """Claim up to ``max_tasks`` tasks in one call (most urgent first), waiting up to ``wait_seconds`` for any;
        retried as safely as ``claim`` (one request id names the whole claim)."""
        body = {**_claim_body(runner_id, types, wait_seconds, lease_seconds), "max_tasks": max_tasks}
        response = self.request("POST", "/api/agent/tasks/claims", json=body, timeout=self.timeout + wait_seconds,
                                keyed=True)
        return TaskList.model_validate(response.json()).tasks

    def heartbeat(self, task_id: int, claim_token: int, **fields: Any) -> Task:
        """Extend the lease; fenced by the claim token, so repeating it is safe."""
        body = {"claim_token": claim_token, **fields}
        return Task.model_validate(self.post(f"/api/agent/tasks/{task_id}/heartbeat", body, keyed=True))

    def finish(self, task_id: int, claim_token: int, status: TaskStatus | str, **fields: Any) -> Task:
        """End a claim; the API returns the stored result when this exact finish was already recorded."""
        return Task.model_validate(self.post(f"/api/agent/tasks/{task_id}/finish",
                                             _finish_body(claim_token, status, fields), keyed=True))

    def finish_and_claim(
        self, task_id: int, claim_token: int, status: TaskStatus | str, *, runner_id: str,
        types: list[str] | None = None, wait_seconds: float = 0.0, lease_seconds: float | None = None,
        **fields: Any,
    ) -> tuple[Task, Task | None]:
        """End a claim and claim the runner's next task in one call: (finished, next or None).

        Safe to retry like its two halves: the finish is fenced by its claim token, the claim has a request id."""
        body = {**_finish_body(claim_token, status, fields),
                "claim_next": _claim_body(runner_id, types, wait_seconds, lease_seconds)}
        response = self.request("POST", f"/api/agent/tasks/{task_id}/finish", json=body,
                                timeout=self.timeout + wait_seconds, keyed=True)
        answer = FinishAndClaim.model_validate(response.json())
        return answer.finished, answer.next

    def decide(self, task_id: int, decision: str, decided_by: str) -> Task:
        """Answer a task's question; the same answer by the same person again is accepted as a repeat."""
        body = {"decision": decision, "decided_by": decided_by}
        return Task.model_validate(self.request("PATCH", f"/api/agent/tasks/{task_id}", json=body, keyed=True).json())

    def retry_task(self, task_id: int) -> Task:
        """Send a failed task back to pending (never repeated: a second retry could restart a later failure)."""
        body = {"status": TaskStatus.PENDING.value}
        return Task.model_validate(self.request("PATCH", f"/api/agent/tasks/{task_id}", json=body).json())

    def task_log(self, task_id: int, tail: int = 0) -> str:
        return self.request("GET", f"/api/agent/tasks/{task_id}/log", params={"tail": tail}).text

    def pipeline_status(self) -> PipelineStatus:
        return PipelineStatus.model_validate(self.get("/api/agent/pipeline-status"))

    def task_metrics(self) -> dict[str, Any]:
        return self.get("/api/agent/metrics")

    def monitor_issues(self) -> MonitorIssueList:
        return MonitorIssueList.model_validate(self.get("/api/agent/monitor-issues"))

    def fatal_issues(self) -> FatalIssueList:
        return FatalIssueList.model_validate(self.get("/api/agent/fatal-issues"))

    def runner_heartbeat(
        self, runner_id: str, host: str, pid: int, version: str, info: dict[str, Any] | None = None
    ) -> Runner:
        """Register or refresh a runner: an upsert, safe to repeat."""
        body = {"runner_id": runner_id, "host": host, "pid": pid, "version": version, "info": info}
        return Runner.model_validate(self.post("/api/agent/runners/heartbeat", body, keyed=True))

    def prune(self, *, dry_run: bool = False) -> dict[str, int | bool]:
        """One retention pass over the store by the API (``dry_run``: counted only): {dry_run, tasks,
        monitor_issues, runners}. Safe to repeat, so retried like a read."""
        answer: dict[str, int | bool] = self.post("/api/agent/prune", {"dry_run": dry_run}, keyed=True)
        return answer



def _claim_body(runner_id: str, types: list[str] | None, wait_seconds: float,
                lease_seconds: float | None) -> dict[str, Any]:
    """A claim request with a fresh request id: one id per logical claim, kept by every retry of it."""
    body = {"runner_id": runner_id, "types": [str(t) for t in types] if types else None,
            "wait_seconds": wait_seconds, "lease_seconds": lease_seconds, "request_id": uuid.uuid4().hex}
    return {k: v for k, v in body.items() if v is not None}


def _finish_body(claim_token: int, status: TaskStatus | str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"claim_token": claim_token, "status": str(status), **{k: v for k, v in fields.items() if v is not None}}


def _detail(response: httpx.Response) -> Any:
    """The API's own ``detail``; for an answer that is not JSON (another server on the port, a proxy's error page),
    a short description instead of its markup."""
    try:
        body = response.json()
    except ValueError:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        return f"not an answer of this API ({kind}, {len(response.content)} bytes)"
    return body.get("detail", body) if isinstance(body, dict) else body
