"""The HTTP client every component uses to talk to the API: base URL, token, timeouts, safe retries, typed errors,
typed results (the models of coherence_network.contract) and bodies built from the request models
(coherence_network.request_bodies). Every route it calls is an Endpoint of coherence_network.endpoints.

A retry must be safe to repeat. A request that never reached the API (connection refused) is always retried; one
that may have reached it (a timeout, a 5xx) is retried only when repeating it cannot do the work twice: reads, and
writes that carry a key - a create its Idempotency-Key, a claim its request id, a heartbeat or a finish its claim
token, a decision its own value.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from typing import Any, NamedTuple, TypeVar

import httpx
from pydantic import BaseModel

from coherence_network.client_items import ItemCalls
from coherence_network.client_steering import SteeringCalls
from coherence_network.contract import (
    Component,
    FatalIssueList,
    FinishAndClaim,
    Health,
    MonitorIssueList,
    PipelineStatus,
    Readiness,
    Runner,
    RunnerList,
    Task,
    TaskCount,
    TaskList,
    TaskPage,
    TaskStatus,
    VersionInfo,
)
from coherence_network.endpoints import (
    ACTOR_HEADER,
    CLAIM,
    CLAIM_HELD_HEADER,
    CLAIM_MANY,
    CLEAR_FATAL_ISSUES,
    COMPONENT_HEARTBEAT,
    COUNT_TASKS,
    CREATE_TASK,
    CREATE_TASKS,
    EFFECTIVENESS,
    FATAL_ISSUES,
    FINISH,
    GET_TASK,
    HEALTH,
    LIST_TASKS,
    MONITOR_ISSUES,
    PATCH_TASK,
    PIPELINE_STATUS,
    READY,
    REPORT_FATAL_ISSUE,
    REPORT_MONITOR_ISSUES,
    RUNNER_HEARTBEAT,
    RUNNERS,
    TASK_HEARTBEAT,
    TASK_LOG,
    TASK_METRICS,
    VERSION,
    Endpoint,
    body_of,
    json_of,
    present,
)
from coherence_network.errors import CoherenceError
from coherence_network.request_bodies import (
    ClaimNext,
    ClaimRequest,
    ComponentHeartbeat,
    FatalIssueReport,
    MonitorIssues,
    ReportedIssue,
    RunnerHeartbeat,
    TaskBatch,
    TaskCreate,
    TaskCreateItem,
    TaskFinish,
    TaskHeartbeat,
    TaskPatch,
)
from coherence_network.settings import Settings, get_settings

log = logging.getLogger("coherence.client")


class HeldClaim(NamedTuple):
    """A claim's tasks and how long the API held it before the look that claimed them (CLAIM_HELD_HEADER)."""

    tasks: list[Task]
    held: float


def held_seconds(response: httpx.Response) -> float:
    """CLAIM_HELD_HEADER's value; 0 when absent or not a finite, non-negative number (an older API): the lease is
    then counted from when the claim was sent, which is early, never late."""
    try:
        held = float(response.headers.get(CLAIM_HELD_HEADER, "0"))
    except ValueError:
        return 0.0
    return held if math.isfinite(held) and held > 0 else 0.0




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


class ApiClient(ItemCalls, SteeringCalls):
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
        http: httpx.Client | None = None,
        actor: str | None = None,
    ) -> None:
        """``http``: the connection to send through instead of one of its own (a test's TestClient over an app in
        this process); base URL and token are then that client's. ``actor`` names who acts in the audit trail
        (cli:alice; component:<name> for the pipeline's own parts, whose acts are not an operator's); without it
        the API records "api"."""
        settings = settings or get_settings()
        self.base_url = (base_url or settings.agent_api_base).rstrip("/")
        self.retries = settings.coherence_http_retries if retries is None else retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = settings.coherence_http_timeout if timeout is None else timeout
        token = settings.coherence_api_token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if actor:
            headers[ACTOR_HEADER] = actor
        self._http = http or httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout)
        if http is not None and actor:
            self._http.headers[ACTOR_HEADER] = actor

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

    def call(self, endpoint: Endpoint, body: BaseModel | None = None, *, timeout: float | None = None,
             retries: int | None = None, keyed: bool = False, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, **path: Any) -> httpx.Response:
        """Send ``body`` to ``endpoint`` (its ``{name}`` parts filled from ``path``)."""
        return self.request(endpoint.method, endpoint.path.format(**path), json=json_of(body), params=params,
                            timeout=timeout, retries=retries, keyed=keyed, headers=headers)

    # --- tasks ----------------------------------------------------------------------------------------------
    def create_task(self, direction: str, task_type: str, *, idempotency_key: str | None = None,
                    **fields: Any) -> Task:
        """Create a task. One key per logical create (a fresh one unless given), so a retry never makes two."""
        key = idempotency_key or uuid.uuid4().hex
        body = body_of(TaskCreate, direction=direction, task_type=str(task_type), **fields)
        return Task.model_validate(self.call(CREATE_TASK, body, keyed=True, headers={"Idempotency-Key": key}).json())

    def create_tasks(self, items: list[dict[str, Any]]) -> list[Task]:
        """Create many tasks in one call and one transaction, in order. Every item gets an idempotency key (a fresh
        one unless it has its own), so a retried batch returns the tasks the first one made."""
        body = body_of(TaskBatch, tasks=[
            body_of(TaskCreateItem, **{**item, "task_type": str(item["task_type"]),
                                     "idempotency_key": item.get("idempotency_key") or uuid.uuid4().hex})
            for item in items])
        return TaskList.model_validate(self.call(CREATE_TASKS, body, keyed=True).json()).tasks

    def get_task(self, task_id: int) -> Task:
        return Task.model_validate(self.call(GET_TASK, task_id=task_id).json())

    def list_tasks(self, **filters: Any) -> TaskPage:
        return TaskPage.model_validate(self.call(LIST_TASKS, params=present(filters)).json())

    def count_tasks(self) -> TaskCount:
        return TaskCount.model_validate(self.call(COUNT_TASKS).json())

    def claim(
        self, runner_id: str, *, types: list[str] | None = None, wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> Task | None:
        """Claim a task, waiting up to ``wait_seconds`` for one; None when none came.

        The claim carries a fresh request id, so a retry after a lost response gets the task this claim already
        got instead of leaving it claimed by a runner that never learns of it."""
        body = _claim(ClaimRequest, runner_id, types, wait_seconds, lease_seconds)
        response = self.call(CLAIM, body, timeout=self.timeout + wait_seconds, keyed=True)
        return None if response.status_code == 204 else Task.model_validate(response.json())

    def claim_many(
        self, runner_id: str, max_tasks: int, *, types: list[str] | None = None, wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> list[Task]:
        """Claim up to ``max_tasks`` tasks in one call (most urgent first), waiting up to ``wait_seconds`` for any;
        retried as safely as ``claim`` (one request id names the whole claim)."""
        return self.claim_held(runner_id, max_tasks, types=types, wait_seconds=wait_seconds,
                               lease_seconds=lease_seconds).tasks

    def claim_held(
        self, runner_id: str, max_tasks: int, *, types: list[str] | None = None, wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
    ) -> HeldClaim:
        """``claim_many``, with how long the API held the claim before the look that claimed: a runner counts the
        lease from when it sent the claim plus that (never later than the grant), not from when the answer came."""
        body = _claim(ClaimRequest, runner_id, types, wait_seconds, lease_seconds, max_tasks=max_tasks)
        response = self.call(CLAIM_MANY, body, timeout=self.timeout + wait_seconds, keyed=True)
        return HeldClaim(TaskList.model_validate(response.json()).tasks, held_seconds(response))

    def heartbeat(self, task_id: int, claim_token: int, **fields: Any) -> Task:
        """Extend the lease; fenced by the claim token, so repeating it is safe."""
        body = body_of(TaskHeartbeat, claim_token=claim_token, **fields)
        return Task.model_validate(self.call(TASK_HEARTBEAT, body, keyed=True, task_id=task_id).json())

    def finish(self, task_id: int, claim_token: int, status: TaskStatus | str, **fields: Any) -> Task:
        """End a claim; the API returns the stored result when this exact finish was already recorded."""
        body = body_of(TaskFinish, claim_token=claim_token, status=str(status), **fields)
        return Task.model_validate(self.call(FINISH, body, keyed=True, task_id=task_id).json())

    def finish_and_claim(
        self, task_id: int, claim_token: int, status: TaskStatus | str, *, runner_id: str,
        types: list[str] | None = None, wait_seconds: float = 0.0, lease_seconds: float | None = None,
        **fields: Any,
    ) -> tuple[Task, Task | None]:
        """End a claim and claim the runner's next task in one call: (finished, next or None).

        Safe to retry like its two halves: the finish is fenced by its claim token, the claim has a request id."""
        body = body_of(TaskFinish, claim_token=claim_token, status=str(status), **fields,
                     claim_next=_claim(ClaimNext, runner_id, types, wait_seconds, lease_seconds))
        response = self.call(FINISH, body, timeout=self.timeout + wait_seconds, keyed=True, task_id=task_id)
        answer = FinishAndClaim.model_validate(response.json())
        return answer.finished, answer.next

    def decide(self, task_id: int, decision: str, decided_by: str) -> Task:
        """Answer a task's question; the same answer by the same person again is accepted as a repeat."""
        body = body_of(TaskPatch, decision=decision, decided_by=decided_by)
        return Task.model_validate(self.call(PATCH_TASK, body, keyed=True, task_id=task_id).json())

    def retry_task(self, task_id: int) -> Task:
        """Send a failed or cancelled task back to pending (never repeated: a second retry could restart a later
        failure)."""
        body = body_of(TaskPatch, status=TaskStatus.PENDING)
        return Task.model_validate(self.call(PATCH_TASK, body, task_id=task_id).json())

    def task_log(self, task_id: int, tail: int = 0) -> str:
        return self.call(TASK_LOG, params={"tail": tail}, task_id=task_id).text

    # --- the pipeline ---------------------------------------------------------------------------------------
    def pipeline_status(self) -> PipelineStatus:
        return PipelineStatus.model_validate(self.call(PIPELINE_STATUS).json())

    def task_metrics(self, *, retries: int | None = None) -> dict[str, Any]:
        """Success rates, run time and queue wait by task type, throughput per hour."""
        answer: dict[str, Any] = self.call(TASK_METRICS, retries=retries).json()
        return answer

    def effectiveness(self, *, retries: int | None = None) -> dict[str, Any]:
        """Throughput, success rate, issues, backlog progress and the goal figure (``coherence doctor``)."""
        answer: dict[str, Any] = self.call(EFFECTIVENESS, retries=retries).json()
        return answer

    def runner_heartbeat(
        self, runner_id: str, host: str, pid: int, version: str, info: dict[str, Any] | None = None
    ) -> Runner:
        """Register or refresh a runner: an upsert, safe to repeat."""
        body = body_of(RunnerHeartbeat, runner_id=runner_id, host=host, pid=pid, version=version, info=info)
        return Runner.model_validate(self.call(RUNNER_HEARTBEAT, body, keyed=True).json())

    def runners(self) -> list[Runner]:
        """Every runner in the registry, with when it was first and last seen."""
        return RunnerList.model_validate(self.call(RUNNERS).json()).items

    def component_heartbeat(self, component: Component | str, host: str, pid: int, version: str,
                            info: dict[str, Any] | None = None) -> None:
        """Say a component (the project manager, the monitor...) is alive, with a summary of its state. Tried once:
        a component heartbeats again soon, and being seen is not worth holding up its work."""
        body = body_of(ComponentHeartbeat, component=str(component), host=host, pid=pid, version=version, info=info)
        self.call(COMPONENT_HEARTBEAT, body, retries=0)

    # --- issues ---------------------------------------------------------------------------------------------
    def monitor_issues(self) -> MonitorIssueList:
        return MonitorIssueList.model_validate(self.call(MONITOR_ISSUES).json())

    def report_monitor_issues(self, host: str, issues: list[dict[str, Any]]) -> None:
        """A monitor's open issues on ``host`` (the whole set: the host's issues not listed are resolved)."""
        body = body_of(MonitorIssues, host=host, issues=[body_of(ReportedIssue, **issue) for issue in issues])
        self.call(REPORT_MONITOR_ISSUES, body, retries=0)

    def fatal_issues(self) -> FatalIssueList:
        return FatalIssueList.model_validate(self.call(FATAL_ISSUES).json())

    def report_fatal_issue(self, *, component: str, reason: str, detail: str, recovery_tried: str, host: str,
                           at: str | None = None) -> None:
        """A component the supervisor could not keep running (tried once: ``fatal.sync`` tries again later)."""
        body = body_of(FatalIssueReport, component=component, reason=reason, detail=detail,
                     recovery_tried=recovery_tried, host=host, at=at)
        self.call(REPORT_FATAL_ISSUE, body, retries=0)

    def clear_fatal_issues(self, before: str | None = None, *, by: str | None = None) -> int:
        """Clear the fatal issues recorded up to ``before`` (ISO 8601; all without it); how many were cleared.
        ``by``: the operator who asked (a clear the supervisor applies later is still theirs in the audit trail)."""
        headers = {ACTOR_HEADER: by} if by else None
        answer = self.call(CLEAR_FATAL_ISSUES, params=present({"before": before}), retries=0, headers=headers).json()
        return int(answer["cleared"])

    # --- the API process ------------------------------------------------------------------------------------
    def health(self, *, retries: int | None = None) -> Health:
        """Liveness: the API process answers (it never touches the store)."""
        return Health.model_validate(self.call(HEALTH, retries=retries).json())

    def ready(self, *, retries: int | None = None) -> Readiness:
        """Readiness: every check passed (a failed one is an ApiUnavailable whose detail lists the checks)."""
        return Readiness.model_validate(self.call(READY, retries=retries).json())

    def version(self) -> VersionInfo:
        """The version and git SHA of the code the API process runs."""
        return VersionInfo.model_validate(self.call(VERSION).json())


_Claim = TypeVar("_Claim", bound=ClaimRequest)


def _claim(model: type[_Claim], runner_id: str, types: list[str] | None, wait_seconds: float,
           lease_seconds: float | None, **more: Any) -> _Claim:
    """A claim with a fresh request id: one id per logical claim, kept by every retry of it."""
    return body_of(model, runner_id=runner_id, types=[str(t) for t in types] if types else None,
                 wait_seconds=wait_seconds, lease_seconds=lease_seconds, request_id=uuid.uuid4().hex, **more)


def _detail(response: httpx.Response) -> Any:
    """The API's own ``detail``; for an answer that is not JSON (another server on the port, a proxy's error page),
    a short description instead of its markup."""
    try:
        body = response.json()
    except ValueError:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        return f"not an answer of this API ({kind}, {len(response.content)} bytes)"
    return body.get("detail", body) if isinstance(body, dict) else body
