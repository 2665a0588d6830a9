"""The routes of the API as the client calls them, and the builders of what it sends: no module outside the API and
the client spells a path (tests/integration/test_contract.py holds them against the API's OpenAPI document)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from coherence_network.request_bodies import (
    BulkActRequest,
    BulkPreviewRequest,
    CancelRequest,
    ClaimRequest,
    ComponentHeartbeat,
    CostCapsRequest,
    FatalIssueReport,
    MonitorIssues,
    PauseRequest,
    PruneRequest,
    RestartNote,
    ResumeRequest,
    RunnerHeartbeat,
    TaskBatch,
    TaskCreate,
    TaskFinish,
    TaskHeartbeat,
    TaskPatch,
    TypePolicyRequest,
)

_Body = TypeVar("_Body", bound=BaseModel)
# Who acts, for the audit trail: cli:alice, console:bob, telegram:carol; component:<name> for the pipeline's own parts.
ACTOR_HEADER = "X-Coherence-Actor"
COMPONENT_ACTOR = "component:"
# How long a long-poll claim waited in the API before the look that claimed (seconds, the API's monotonic clock; 0 when
# it claimed at once): the runner counts the lease from when it sent the claim plus this, a moment never later than
# the grant, however late the answer arrives (a stalled API, a slow network).
CLAIM_HELD_HEADER = "X-Coherence-Claim-Held"


@dataclass(frozen=True)
class Endpoint:
    """A route of the API as the client calls it: ``path`` as the OpenAPI document spells it (``{task_id}`` filled
    in per call), ``body`` the request model it is sent (coherence_network.request_bodies)."""

    method: str
    path: str
    body: type[BaseModel] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


# Every route the client calls.
LIST_TASKS = Endpoint("GET", "/api/agent/tasks")
CREATE_TASK = Endpoint("POST", "/api/agent/tasks", TaskCreate)
CREATE_TASKS = Endpoint("POST", "/api/agent/tasks/batch", TaskBatch)
COUNT_TASKS = Endpoint("GET", "/api/agent/tasks/count")
GET_TASK = Endpoint("GET", "/api/agent/tasks/{task_id}")
PATCH_TASK = Endpoint("PATCH", "/api/agent/tasks/{task_id}", TaskPatch)
TASK_LOG = Endpoint("GET", "/api/agent/tasks/{task_id}/log")
CLAIM = Endpoint("POST", "/api/agent/tasks/claim", ClaimRequest)
CLAIM_MANY = Endpoint("POST", "/api/agent/tasks/claims", ClaimRequest)
TASK_HEARTBEAT = Endpoint("POST", "/api/agent/tasks/{task_id}/heartbeat", TaskHeartbeat)
FINISH = Endpoint("POST", "/api/agent/tasks/{task_id}/finish", TaskFinish)
RUNNER_HEARTBEAT = Endpoint("POST", "/api/agent/runners/heartbeat", RunnerHeartbeat)
RUNNERS = Endpoint("GET", "/api/agent/runners")
COMPONENT_HEARTBEAT = Endpoint("POST", "/api/agent/components/heartbeat", ComponentHeartbeat)
PIPELINE_STATUS = Endpoint("GET", "/api/agent/pipeline-status")
TASK_METRICS = Endpoint("GET", "/api/agent/metrics")
EFFECTIVENESS = Endpoint("GET", "/api/agent/effectiveness")
MONITOR_ISSUES = Endpoint("GET", "/api/agent/monitor-issues")
REPORT_MONITOR_ISSUES = Endpoint("POST", "/api/agent/monitor-issues", MonitorIssues)
FATAL_ISSUES = Endpoint("GET", "/api/agent/fatal-issues")
REPORT_FATAL_ISSUE = Endpoint("POST", "/api/agent/fatal-issues", FatalIssueReport)
CLEAR_FATAL_ISSUES = Endpoint("DELETE", "/api/agent/fatal-issues")
HEALTH = Endpoint("GET", "/api/health")
READY = Endpoint("GET", "/api/ready")
VERSION = Endpoint("GET", "/api/version")
PRUNE = Endpoint("POST", "/api/agent/prune", PruneRequest)
PAUSE = Endpoint("POST", "/api/agent/pause", PauseRequest)
RESUME = Endpoint("POST", "/api/agent/resume", ResumeRequest)
PAUSES = Endpoint("GET", "/api/agent/pauses")
BULK_PREVIEW = Endpoint("POST", "/api/agent/tasks/bulk/preview", BulkPreviewRequest)
BULK_ACT = Endpoint("POST", "/api/agent/tasks/bulk/act", BulkActRequest)
AUDIT = Endpoint("GET", "/api/audit")
NOTE_RESTART = Endpoint("POST", "/api/audit/restarts", RestartNote)
CANCEL = Endpoint("POST", "/api/agent/tasks/{task_id}/cancel", CancelRequest)
POLICIES = Endpoint("GET", "/api/agent/policies")
SET_POLICY = Endpoint("PUT", "/api/agent/policies/{task_type}", TypePolicyRequest)
ITEMS = Endpoint("GET", "/api/agent/items")
ITEM = Endpoint("GET", "/api/agent/items/{item}")
CAPS = Endpoint("GET", "/api/agent/caps")
SET_CAPS = Endpoint("PUT", "/api/agent/caps", CostCapsRequest)
SPEND = Endpoint("GET", "/api/agent/spend")
ENDPOINTS = tuple(value for value in tuple(globals().values()) if isinstance(value, Endpoint))  # every one above


def json_of(body: BaseModel | None) -> Any:
    """A body as sent: its fields, without those left unset (None)."""
    return None if body is None else body.model_dump(mode="json", exclude_none=True, warnings=False)


def body_of(model: type[_Body], /, **values: Any) -> _Body:
    """A request body built from its contract model, not validated here: the API is the one judge of what it
    accepts and answers 422 (ApiValidationError) for what it refuses. A field the model lacks is a programming
    error, refused at once. ``model`` is positional only: a body may have a field of that name (a finish's)."""
    unknown = values.keys() - model.model_fields.keys()
    if unknown:
        raise TypeError(f"{model.__name__} has no field {', '.join(sorted(unknown))}")
    return model.model_construct(**values)


def present(values: dict[str, Any]) -> dict[str, Any]:
    """Query parameters that were given."""
    return {k: v for k, v in values.items() if v is not None}
