"""The HTTP client every component uses to talk to the API: base URL, token, timeouts, retries, typed errors."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import httpx

from coherence_network.settings import Settings, get_settings

log = logging.getLogger("coherence.client")


class ApiError(Exception):
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


class ApiClient:
    """A small synchronous client. Connection errors and 5xx are retried with exponential backoff and jitter."""

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

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- core -----------------------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
        timeout: float | None = None, retries: int | None = None,
    ) -> httpx.Response:
        """Send a request; return the response for 2xx, raise a typed ApiError otherwise."""
        attempts = (self.retries if retries is None else retries) + 1
        last: ApiError | None = None
        for attempt in range(attempts):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                log.debug("retrying %s %s in %.2fs (%s)", method, path, delay, last)
                time.sleep(delay)
            try:
                response = self._http.request(
                    method, path, json=json, params=params, timeout=timeout or self.timeout
                )
            except httpx.TransportError as exc:
                last = ApiUnavailable(0, f"{type(exc).__name__}: {exc}", method, path)
                continue
            if response.status_code >= 500:
                last = ApiUnavailable(response.status_code, _detail(response), method, path)
                continue
            if response.status_code >= 400:
                cls = _BY_STATUS.get(response.status_code, ApiError)
                raise cls(response.status_code, _detail(response), method, path)
            return response
        assert last is not None
        raise last

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        response = self.request("POST", path, json=body, **kwargs)
        return response.json() if response.content else None

    # --- tasks ----------------------------------------------------------------------------------------------
    def create_task(self, direction: str, task_type: str, **fields: Any) -> dict[str, Any]:
        return self.post("/api/agent/tasks", {"direction": direction, "task_type": task_type, **fields})

    def get_task(self, task_id: int) -> dict[str, Any]:
        return self.get(f"/api/agent/tasks/{task_id}")

    def list_tasks(self, **filters: Any) -> dict[str, Any]:
        return self.get("/api/agent/tasks", **filters)

    def count_tasks(self) -> dict[str, Any]:
        return self.get("/api/agent/tasks/count")

    def claim(
        self, runner_id: str, *, types: list[str] | None = None, wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> dict[str, Any] | None:
        """Claim a task, waiting up to ``wait_seconds`` for one; None when none came."""
        body = {"runner_id": runner_id, "types": types, "wait_seconds": wait_seconds, "lease_seconds": lease_seconds}
        response = self.request(
            "POST", "/api/agent/tasks/claim", json={k: v for k, v in body.items() if v is not None},
            timeout=self.timeout + wait_seconds,
        )
        return None if response.status_code == 204 else response.json()

    def heartbeat(self, task_id: int, claim_token: int, **fields: Any) -> dict[str, Any]:
        return self.post(f"/api/agent/tasks/{task_id}/heartbeat", {"claim_token": claim_token, **fields})

    def finish(self, task_id: int, claim_token: int, status: str, **fields: Any) -> dict[str, Any]:
        body = {"claim_token": claim_token, "status": status, **{k: v for k, v in fields.items() if v is not None}}
        return self.post(f"/api/agent/tasks/{task_id}/finish", body)

    def decide(self, task_id: int, decision: str, decided_by: str) -> dict[str, Any]:
        body = {"decision": decision, "decided_by": decided_by}
        return self.request("PATCH", f"/api/agent/tasks/{task_id}", json=body).json()

    def retry_task(self, task_id: int) -> dict[str, Any]:
        return self.request("PATCH", f"/api/agent/tasks/{task_id}", json={"status": "pending"}).json()

    def task_log(self, task_id: int, tail: int = 0) -> str:
        return self.request("GET", f"/api/agent/tasks/{task_id}/log", params={"tail": tail}).text

    def pipeline_status(self) -> dict[str, Any]:
        return self.get("/api/agent/pipeline-status")

    def task_metrics(self) -> dict[str, Any]:
        return self.get("/api/agent/metrics")

    def runner_heartbeat(self, runner_id: str, host: str, pid: int, version: str, info: dict[str, Any] | None = None) -> Any:
        body = {"runner_id": runner_id, "host": host, "pid": pid, "version": version, "info": info}
        return self.post("/api/agent/runners/heartbeat", body)


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except ValueError:
        return response.text[:500]
