"""Request bodies: what the API accepts, shared by its routers and the client (which builds its bodies from these),
and the bounds every input meets at the edge.

Pydantic turns bad input into 422 with field-level messages. Whatever is accepted must also be storable and
readable back on both stores: integers within the narrowest column (PostgreSQL INTEGER, 32 bits), text without
NUL (PostgreSQL refuses it) or lone surrogates (not UTF-8), free-form JSON bounded in depth and size (one stored
row nested too deep once made every listing that included it fail). Text people type is refused when it holds
what the store cannot; agent output is binary-ish and is kept, with those characters replaced.

Free of FastAPI and the store, so every component imports it cheaply.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    model_validator,
)

from coherence_network.contract import MAX_BATCH, MAX_CLAIM, Component, ErrorCategory, TaskStatus, TaskType
from coherence_network.contract_steering import BULK_STATUSES, POLICY_FIELDS, BulkAction, PolicyField

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # PostgreSQL INTEGER: the narrowest integer column of either store
INT64_MAX = 2**63 - 1  # BIGINT: token counts
MAX_JSON_DEPTH = 32  # nesting of objects and arrays in a free-form JSON field
MAX_JSON_BYTES = 64 * 1024  # a free-form JSON field, serialized
_NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates (json.loads joins valid pairs)
REPLACEMENT = "\ufffd"

FinishStatus = Literal[
    TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.NEEDS_DECISION, TaskStatus.PENDING, TaskStatus.CANCELLED
]


def refuse_unstorable(value: str) -> str:
    found = _UNSTORABLE.search(value)
    if found is not None:
        what = "NUL (\\u0000)" if found.group() == "\x00" else "a lone surrogate (not valid Unicode)"
        raise ValueError(f"must not contain {what}: the store cannot hold it")
    return value


def storable_text(value: str) -> tuple[str, int]:
    """``value`` with NUL and lone surrogates replaced by U+FFFD, and how many were replaced."""
    return _UNSTORABLE.subn(REPLACEMENT, value)


def _bounded_json(value: Any) -> Any:
    """Free-form JSON the store holds and every reader can serialize again: bounded depth and size, text without
    NUL or lone surrogates, finite numbers (json.loads accepts NaN, which no JSON answer can carry)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, str):
                    refuse_unstorable(key)
                pending.append((child, depth + 1))
        elif isinstance(item, str):
            refuse_unstorable(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 64:
            raise ValueError("integers must fit in 64 bits")
    if len(json.dumps(value)) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES} bytes of JSON")
    return value


def _not_bool(value: Any) -> Any:
    """JSON true and false are not numbers, though pydantic would read them as 1 and 0."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def _not_a_number(value: Any) -> Any:
    """A time is ISO 8601 text; pydantic would read a number (or text like "0.5") as seconds since 1970."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an ISO 8601 time with a zone, e.g. 2026-11-25T06:00:00Z, not a number")
    return value


def _in_store_range(value: datetime) -> datetime:
    """Stored as UTC: a time whose UTC form falls outside years 1..9999 cannot be held."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None
    return value


# Text a person or a program types (directions, commands, decisions, names): refused when unstorable.
Text = Annotated[str, AfterValidator(refuse_unstorable)]
# Free-form JSON objects (a task's context, a heartbeat's info, an issue's detail).
JsonObject = Annotated[
    dict[str, Any],
    AfterValidator(_bounded_json),
    Field(description=f"Free-form JSON: at most {MAX_JSON_DEPTH} levels deep and {MAX_JSON_BYTES} bytes"),
]
# Numbers in request bodies: true and false are refused (else "priority": false would be 0).
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
Int32 = Annotated[Int, Field(ge=INT32_MIN, le=INT32_MAX)]
Pid = Annotated[Int, Field(ge=1, le=INT32_MAX)]
ClaimToken = Annotated[Int, Field(ge=1, le=INT32_MAX)]
UtcTime = Annotated[AwareDatetime, BeforeValidator(_not_a_number), AfterValidator(_in_store_range)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentReport(Strict):
    """A runner's report that carries agent output: NUL and lone surrogates in it are replaced, not refused (the
    agent's bytes are what they are, and refusing them would lose the result); ``replaced`` says how many."""

    agent_text: ClassVar[tuple[str, ...]] = ()
    _replaced: dict[str, int] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _make_storable(cls, data: Any, handler: ModelWrapValidatorHandler[AgentReport]) -> AgentReport:
        """Replace before validating: a lone surrogate would not even pass as a string."""
        replaced: dict[str, int] = {}
        if isinstance(data, dict):
            data = dict(data)
            for name in cls.agent_text:
                if isinstance(data.get(name), str):
                    data[name], count = storable_text(data[name])
                    if count:
                        replaced[name] = count
        report = handler(data)
        report._replaced = replaced
        return report

    @property
    def replaced(self) -> dict[str, int]:
        """Characters replaced with U+FFFD, by field."""
        return dict(self._replaced)


class TaskCreate(Strict):
    direction: Text = Field(min_length=1, max_length=5000, description="What to do")
    task_type: TaskType
    command: Text | None = Field(None, max_length=20000, description="Command line the runner executes")
    priority: Int = Field(0, ge=-1000, le=1000, description="Higher runs first")
    max_attempts: Int | None = Field(None, ge=1, le=100)
    timeout_seconds: Float | None = Field(None, gt=0, le=7 * 86400, description="Overrides AGENT_TASK_TIMEOUT")
    context: JsonObject | None = None



class TaskCreateItem(TaskCreate):
    """One task of a batch create; its own key plays the Idempotency-Key header's part."""

    idempotency_key: Text | None = Field(
        None, min_length=1, max_length=200,
        description="Makes this item safe to retry: the same key returns the task the first create made",
    )


class TaskBatch(Strict):
    tasks: list[TaskCreateItem] = Field(min_length=1, max_length=MAX_BATCH, description="Created in one transaction")


class TaskPatch(Strict):
    """An operator's change: a decision for a needs_decision task, or ``status: pending`` to retry a failed one."""

    decision: Text | None = Field(None, min_length=1, max_length=5000)
    decided_by: Text | None = Field(None, min_length=1, max_length=200, description="Who answered, e.g. api:alice")
    status: Literal[TaskStatus.PENDING] | None = Field(None, description="pending retries a failed task")

    @model_validator(mode="after")
    def _one_change(self) -> TaskPatch:
        if (self.decision is None) == (self.status is None):
            raise ValueError("give exactly one of decision or status")
        return self


class ClaimRequest(Strict):
    runner_id: Text = Field(min_length=1, max_length=200)
    types: list[TaskType] | None = Field(None, max_length=len(TaskType))
    wait_seconds: Float = Field(0.0, ge=0, le=60, description="Wait this long for work before answering 204")
    lease_seconds: Float | None = Field(None, gt=0, le=86400)
    request_id: Text | None = Field(
        None, min_length=1, max_length=100,
        description="Names this claim: a retry with the same id returns the task this claim already got",
    )
    max_tasks: Int = Field(1, ge=1, le=MAX_CLAIM, description="Claim up to this many tasks at once")


class ClaimNext(ClaimRequest):
    """The claim a finish makes right after it: one task (``next``)."""

    max_tasks: Literal[1] = Field(1, description="A finish claims at most one next task")


class TaskHeartbeat(AgentReport):
    agent_text = ("current_step",)

    claim_token: ClaimToken
    progress_pct: Float | None = Field(None, ge=0, le=100)
    current_step: str | None = Field(None, max_length=500, description="Agent output: NUL etc. become U+FFFD")
    lease_seconds: Float | None = Field(None, gt=0, le=86400)
    silent_seconds: Float | None = Field(None, ge=0, le=10**7, description="Seconds since the task last printed")
    cost_usd: Float | None = Field(None, ge=0, le=1e9, description="The run's cost so far, as its agent reported it")


class TaskFinish(AgentReport):
    agent_text = ("output", "decision_prompt", "error_summary")

    claim_token: ClaimToken
    status: FinishStatus
    output: str | None = Field(None, max_length=2_000_000, description="Agent output: NUL etc. become U+FFFD")
    exit_code: Int32 | None = None
    error_category: ErrorCategory | None = Field(None, description="Why the run failed (failed or cancelled only)")
    error_summary: str | None = Field(None, max_length=500, description="One line on the failure")
    decision_prompt: str | None = Field(None, min_length=1, max_length=5000, description="The agent's question")
    agent: Text | None = Field(None, min_length=1, max_length=32, description="The agent preset that ran it")
    model: Text | None = Field(None, min_length=1, max_length=200)
    tokens_in: Int | None = Field(None, ge=0, le=INT64_MAX, description="Tokens the agent reported reading")
    tokens_out: Int | None = Field(None, ge=0, le=INT64_MAX, description="Tokens the agent reported writing")
    cost_usd: Float | None = Field(None, ge=0, le=1e9, description="What the agent reported the run cost")
    evidence: JsonObject | None = Field(None, description="What the phase left: branch, commit, diffstat, verdict")
    claim_next: ClaimNext | None = Field(
        None, description="Claim the runner's next task in the same call: the answer is {finished, next}"
    )

    @model_validator(mode="after")
    def _question_for_decision(self) -> TaskFinish:
        if self.status is TaskStatus.NEEDS_DECISION and not self.decision_prompt:
            raise ValueError("status needs_decision requires decision_prompt")
        return self


class RunnerHeartbeat(Strict):
    runner_id: Text = Field(min_length=1, max_length=200)
    host: Text = Field(min_length=1, max_length=255)
    pid: Pid
    version: Text = Field(min_length=1, max_length=100)
    info: JsonObject | None = None


class ComponentHeartbeat(Strict):
    component: Text = Field(min_length=1, max_length=100, description="Component name (contract.Component), e.g. "
                            f"{Component.MANAGER}; a name this API does not know yet is kept as given")
    host: Text = Field(min_length=1, max_length=255)
    pid: Pid
    version: Text = Field("unknown", min_length=1, max_length=100)
    info: JsonObject | None = Field(None, description="A small summary of the component's state")


class ReportedIssue(Strict):
    """One fact a monitor found on its host. ``severity`` is a contract.Severity; one this API does not know (a
    newer monitor's) is kept and graded high."""

    rule: Text = Field(min_length=1, max_length=64)
    severity: Text = Field(min_length=1, max_length=16)
    message: Text = Field(min_length=1, max_length=5000)
    action: Text = Field("", max_length=5000)
    runbook: Text = Field("", max_length=200)
    detail: JsonObject | None = None
    first_seen: UtcTime | None = None


class MonitorIssues(Strict):
    host: Text = Field(min_length=1, max_length=255)
    issues: list[ReportedIssue] = Field(max_length=100, description="Every issue open now; others are resolved")


class FatalIssueReport(Strict):
    """A component the supervisor could not keep running, as a host reports it."""

    component: Text = Field(min_length=1, max_length=100)
    reason: Text = Field(min_length=1, max_length=5000)
    detail: Text = Field("", max_length=20000)
    recovery_tried: Text = Field("", max_length=5000)
    host: Text = Field(min_length=1, max_length=255)
    at: UtcTime | None = None


class RestartNote(Strict):
    """``POST /api/audit/restarts``: a restart an operator requested on a host (`coherence restart` wrote the
    supervisor's request file there), for the audit trail."""

    component: Literal["api", "agent_runner", "project_manager", "monitor", "all"] = Field(
        description="What was restarted (restart.TARGETS)")
    reason: Text = Field(min_length=1, max_length=1000, description="Why, as the request file says")
    host: Text = Field(min_length=1, max_length=255, description="The host whose supervisor acts on it")


class TelegramUpdate(BaseModel):
    """What Telegram posts to the webhook (an Update of the Bot API): the fields the bot reads (a new text message:
    telegram.read_update); the others are Telegram's and ignored."""

    model_config = ConfigDict(extra="allow")

    update_id: int
    message: dict[str, Any] | None = Field(None, description="A new message: from.id, chat.id, chat.type, text")


class PruneRequest(Strict):
    """``POST /api/agent/prune``: retention run now, by the API (the only writer of tasks)."""

    dry_run: bool = False


class PauseRequest(Strict):
    """``POST /api/agent/pause``: hold the whole pipeline (no ``type``) or one task type; running tasks finish."""

    type: TaskType | None = Field(None, description="The task type to pause; none: the whole pipeline")
    by: Text = Field(min_length=1, max_length=200, description="Who pauses, e.g. cli:alice")
    reason: Text = Field(min_length=1, max_length=1000, description="Why: shown on every signal while paused")


class CancelRequest(Strict):
    """``POST /api/agent/tasks/{id}/cancel``: stop a task (pending or waiting: at once; running: by its runner)."""

    reason: Text = Field(min_length=1, max_length=500, description="Why: kept on the task and in the audit trail")
    by: Text | None = Field(None, min_length=1, max_length=200,
                            description="Who cancels, e.g. cli:alice; default: the X-Coherence-Actor header, else api")


class ResumeRequest(Strict):
    """``POST /api/agent/resume``: hand out the paused scope's tasks again (waiting claims wake at once)."""

    type: TaskType | None = Field(None, description="The task type to resume; none: the whole pipeline")
    by: Text = Field(min_length=1, max_length=200, description="Who resumes, e.g. cli:alice")


class BulkFilter(Strict):
    """Which tasks a bulk action takes: every condition given must hold, and one at least is needed (an empty
    filter would take every task)."""

    status: TaskStatus | None = Field(None, description="Only tasks in this status (one the action can move)")
    type: TaskType | None = Field(None, description="Only tasks of this type")
    created_before: UtcTime | None = Field(None, description="Only tasks created before this time")
    created_after: UtcTime | None = Field(None, description="Only tasks created after this time")
    # the list's search (store/search.py MAX_QUERY_CHARS): tasks holding every word
    text: Text | None = Field(None, max_length=500, description="Only tasks holding every word (the list's search)")

    @model_validator(mode="after")
    def _not_empty(self) -> BulkFilter:
        if self.text is not None and not self.text.strip():
            self.text = None
        if all(value is None for value in (self.status, self.type, self.created_before, self.created_after,
                                           self.text)):
            raise ValueError("an empty filter is refused: give at least one of status, type, created_before, "
                             "created_after, text (an empty filter would take every task)")
        return self


class BulkPreviewRequest(Strict):
    """``POST /api/agent/tasks/bulk/preview``: count what a bulk action would take now; its token lets one act."""

    action: BulkAction
    filter: BulkFilter

    @model_validator(mode="after")
    def _status_fits(self) -> BulkPreviewRequest:
        takes = BULK_STATUSES[self.action]
        if self.filter.status is not None and self.filter.status not in takes:
            raise ValueError(f"{self.action.value} takes {' or '.join(takes)} tasks, not {self.filter.status.value} "
                             "ones")
        return self


class BulkActRequest(BulkPreviewRequest):
    """``POST /api/agent/tasks/bulk/act``: do what the preview of the same action and filter counted."""

    token: str = Field(min_length=1, max_length=1000, pattern=r"^[A-Za-z0-9_.\-]+$",
                       description="The preview's token (it expires; one act per token)")
    reason: Text = Field(min_length=1, max_length=500, description="Why: kept in each task's audit record")
    by: Text | None = Field(None, min_length=1, max_length=200,
                            description="Who acts, e.g. cli:alice (default: the X-Coherence-Actor header)")


MAX_POLICY_COUNT = 10_000  # a type's limit of running tasks, or its breaker's failures in a row
MAX_POLICY_DELAY_SECONDS = 7 * 86400.0  # a retry delay


class TypePolicyRequest(Strict):
    """``PUT /api/agent/policies/{task_type}``: change the fields given, put those in ``clear`` back to the setting's
    default, leave the rest as they are."""

    by: Text | None = Field(None, min_length=1, max_length=200,
                            description="Who changes it, e.g. cli:alice; none: the X-Coherence-Actor header")
    max_running: int | None = Field(None, ge=1, le=MAX_POLICY_COUNT,
                                    description="At most this many of the type run at once (to hold it, pause it)")
    retry_delay_seconds: float | None = Field(None, gt=0, le=MAX_POLICY_DELAY_SECONDS,
                                              description="The first automatic retry's delay")
    retry_max_delay_seconds: float | None = Field(None, gt=0, le=MAX_POLICY_DELAY_SECONDS,
                                                  description="The longest delay between automatic retries")
    breaker_failures: int | None = Field(None, ge=0, le=MAX_POLICY_COUNT,
                                         description="Failures in a row that pause the type")
    clear: list[PolicyField] = Field(default_factory=list, description="Fields back to the setting's default")

    @model_validator(mode="after")
    def _one_change_each(self) -> TypePolicyRequest:
        given = {name for name in POLICY_FIELDS if getattr(self, name) is not None}
        if not given and not self.clear:
            raise ValueError("nothing to change: give a field's new value or name it in clear")
        both = sorted(given & set(self.clear))
        if both:
            raise ValueError(f"{', '.join(both)} both set and cleared: give one")
        low, high = self.retry_delay_seconds, self.retry_max_delay_seconds
        if low is not None and high is not None and high < low:
            raise ValueError("retry_max_delay_seconds must not be below retry_delay_seconds")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields to change: the values given, and None for each cleared."""
        given = {name: getattr(self, name) for name in POLICY_FIELDS if getattr(self, name) is not None}
        return {**given, **dict.fromkeys(self.clear)}


class CostCapsRequest(Strict):
    """``PUT /api/agent/caps``: the cost caps given take their new values (US dollars; 0 = no cap); the rest stay."""
    by: Text | None = Field(None, min_length=1, max_length=200, description="Who changes it; none: the actor header")
    task: float | None = Field(None, ge=0, le=1e9, allow_inf_nan=False, description="Per task run")
    item: float | None = Field(None, ge=0, le=1e9, allow_inf_nan=False, description="Per backlog item")
    day: float | None = Field(None, ge=0, le=1e9, allow_inf_nan=False, description="Per UTC day")

    @model_validator(mode="after")
    def _something(self) -> CostCapsRequest:
        if not self.changes():
            raise ValueError("nothing to change: give task, item or day (US dollars, 0 = no cap)")
        return self

    def changes(self) -> dict[str, float]:
        return {name: value for name in ("task", "item", "day") if (value := getattr(self, name)) is not None}
