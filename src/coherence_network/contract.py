"""The one contract every side imports: task statuses and types, the legal moves between statuses, the names of
components, severities and states, and the typed models the API returns and the client reads (what it accepts is
in coherence_network.request_bodies).

Components used to agree on these only by convention (status strings spelled out in many modules, a payload field
guessed); with one module the store, the API, the client and every component cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class TaskStatus(StrEnum):
    """Where a task is in its life; the only moves between them are in LEGAL_MOVES."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    NEEDS_DECISION = "needs_decision"
    CANCELLED = "cancelled"


class ErrorCategory(StrEnum):
    """Why a run failed, recorded with every failure: it decides whether a retry could ever succeed."""

    NONZERO_EXIT = "nonzero_exit"  # the command ran and said no
    TIMEOUT = "timeout"  # the task's timeout_seconds ran out
    KILLED = "killed"  # a signal ended it (out of memory, an operator's kill)
    LEASE_EXPIRED = "lease_expired"  # its runner went silent (died, lost the network)
    CANCELLED = "cancelled"  # an operator cancelled it
    CONFIG_ERROR = "config_error"  # the agent command is missing or refused: no retry can succeed
    AGENT_ERROR = "agent_error"  # the agent CLI failed before doing the work (bad flags, no credentials)
    PUSH_FAILED = "push_failed"  # the work was done but could not be pushed
    NO_CHANGE = "no_change"  # a spec, test or impl phase left no commit with a diff (or not in the files it must touch)
    NO_VERDICT = "no_verdict"  # a review ended without a `VERDICT: pass|fail` line
    STALLED = "stalled"  # the agent printed nothing for COHERENCE_STALL_STOP_SECONDS and was stopped
    OVER_BUDGET = "over_budget"  # the task passed its cost cap (COHERENCE_COST_CAP_TASK_USD) and was stopped


# Categories whose failure a later attempt may heal (the others need an operator's change first).
RETRIABLE_CATEGORIES = frozenset({ErrorCategory.NONZERO_EXIT, ErrorCategory.TIMEOUT, ErrorCategory.KILLED,
                                  ErrorCategory.LEASE_EXPIRED, ErrorCategory.PUSH_FAILED, ErrorCategory.NO_CHANGE,
                                  ErrorCategory.NO_VERDICT, ErrorCategory.STALLED})


class TaskType(StrEnum):
    """What kind of work a task is: the phases of a backlog item, a heal task, or a plain `run:` command."""

    SPEC = "spec"
    TEST = "test"
    IMPL = "impl"
    REVIEW = "review"
    HEAL = "heal"
    RUN = "run"



class Component(StrEnum):
    """The parts of the pipeline by the name they go by everywhere: component heartbeats, logs, the supervisor's
    children, restart requests."""

    API = "api"
    RUNNER = "agent_runner"
    MANAGER = "project_manager"
    MONITOR = "monitor"
    SUPERVISOR = "supervisor"
    TELEGRAM = "telegram"
    INDEXER = "indexer"


class Severity(StrEnum):
    """How serious a flag or an issue is, most serious first (what each means: grading.GRADES)."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class ItemStatus(StrEnum):
    """Where a backlog item is in the project manager's hands; DONE, BLOCKED, SKIPPED and CANCELLED settle it."""

    WAITING = "waiting"
    IN_PROGRESS = "in_progress"
    NEEDS_DECISION = "needs_decision"
    DONE = "done"
    BLOCKED = "blocked"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"  # an operator cancelled its phase's task; a retry of that task takes it up again


class Ecosystem(StrEnum):
    """The package registries the indexers read."""

    NPM = "npm"
    PYPI = "pypi"


class ProjectStatus(StrEnum):
    """What the last fetch of an indexed project found: its metadata, no such package, or an error (retried)."""

    OK = "ok"
    MISSING = "missing"
    FAILED = "failed"


# Every legal move, and the action that makes it. Anything else is a conflict naming the current status.
LEGAL_MOVES: dict[tuple[TaskStatus, TaskStatus], str] = {
    (TaskStatus.PENDING, TaskStatus.RUNNING): "claim",
    (TaskStatus.RUNNING, TaskStatus.COMPLETED): "finish",
    (TaskStatus.RUNNING, TaskStatus.FAILED): "finish",
    (TaskStatus.RUNNING, TaskStatus.NEEDS_DECISION): "ask",
    (TaskStatus.RUNNING, TaskStatus.PENDING): "release or lease expiry",
    (TaskStatus.NEEDS_DECISION, TaskStatus.PENDING): "decide",
    (TaskStatus.FAILED, TaskStatus.PENDING): "retry",
    (TaskStatus.PENDING, TaskStatus.CANCELLED): "cancel",
    (TaskStatus.NEEDS_DECISION, TaskStatus.CANCELLED): "cancel",
    (TaskStatus.RUNNING, TaskStatus.CANCELLED): "finish after a cancel request",
    (TaskStatus.CANCELLED, TaskStatus.PENDING): "retry",
}
# Columns a page of tasks may be sorted by (GET /api/agent/tasks?sort=, the console, coherence tasks --sort); each
# has an index that starts with it (store revision 0009), id breaking ties.
SORT_COLUMNS = ("id", "priority", "status", "task_type", "created_at", "updated_at", "attempts")


def parse_sort(text: str) -> tuple[str, bool]:
    """(column, descending) from ``column`` (ascending) or ``-column`` (descending), as the API and CLI spell it."""
    column = text.removeprefix("-")
    if column not in SORT_COLUMNS:
        raise ValueError(f"sort by one of {', '.join(SORT_COLUMNS)}, with a leading - for descending "
                         "(e.g. -updated_at)")
    return column, text.startswith("-")


MAX_BATCH = 1000  # tasks in one batch create (one transaction)
MAX_CLAIM = 100  # tasks in one claim

# What a runner may report when it ends its claim.
FINISH_STATUSES = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.NEEDS_DECISION, TaskStatus.PENDING,
                   TaskStatus.CANCELLED)
# What a failed or cancelled run keeps of why: the rest of a finish clears it.
ENDED_BADLY = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})
# Statuses a task leaves only by an operator's action (or never).
SETTLED_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})


# --- what the API returns ------------------------------------------------------------------------------------
class Returned(BaseModel):
    """A response body. Unknown fields are kept, so an older client still reads what a newer API sends."""

    model_config = ConfigDict(extra="allow", use_enum_values=False)


class Task(Returned):
    """A task as the API returns it (``GET /api/agent/tasks/{id}``, a create, a claim, a finish...)."""

    id: int
    direction: str
    task_type: TaskType
    status: TaskStatus
    command: str | None = None
    priority: int = 0
    attempts: int = 0  # attempts that ended in failure or lease expiry (not decisions, not releases)
    max_attempts: int = 3
    claim_token: int = 0  # the fencing token: bumped by every claim, so it is also the run number
    claimed_by: str | None = None
    lease_expires_at: datetime | None = None
    timeout_seconds: float | None = None
    progress_pct: float | None = None
    current_step: str | None = None
    output: str | None = None
    exit_code: int | None = None
    decision_prompt: str | None = None
    decision: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    context: dict[str, Any] | None = None
    idempotency_key: str | None = None
    error_category: ErrorCategory | None = None  # why the last run failed (None when it did not)
    error_summary: str | None = None  # one line on the last failure, shown wherever a failed task is
    not_before: datetime | None = None  # no claim before this time (an automatic retry's backoff)
    cancel_requested_at: datetime | None = None  # an operator asked to cancel this running task; its runner stops it
    cancelled_by: str | None = None  # the actor who cancelled (or asked to), e.g. cli:alice
    cancel_reason: str | None = None
    item: str | None = None  # the backlog item a phase task belongs to (its context's "item"), for the item's views
    agent: str | None = None  # the agent preset that ran it (agents.PRESETS), as its runner reported
    model: str | None = None
    tokens_in: int | None = None  # usage as the agent reported it (None: it reported none)
    tokens_out: int | None = None
    cost_usd: float | None = None
    last_output_at: datetime | None = None  # a running task's last line of output, as its runner's heartbeat says
    evidence: dict[str, Any] | None = None  # what a phase left: branch, commit, diffstat, files, verdict, merge, push
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime


class TaskPage(Returned):
    """A page of ``GET /api/agent/tasks`` and the total that matches the filter."""

    items: list[Task]
    total: int
    limit: int
    offset: int
    # False when a search (q) matched more tasks than it counts (store.search.COUNT_CAP, 1,000): total is then that
    # cap plus one, i.e. "more than 1,000"; a list without a search always counts exactly.
    total_exact: bool = True


class TaskList(Returned):
    """A batch create's tasks (in the order given) or the tasks of one claim (most urgent first)."""

    tasks: list[Task]


class FinishAndClaim(Returned):
    """A finish that also claimed: the finished task and the runner's next one (None when none was claimable)."""

    finished: Task
    next: Task | None = None


class TaskCount(Returned):
    """``GET /api/agent/tasks/count``: every status is present."""

    total: int
    by_status: dict[TaskStatus, int]


class RegistryRow(Returned):
    """Who is alive: where a runner or component runs, and when it was first and last seen."""

    host: str
    pid: int
    version: str
    info: dict[str, Any] | None = None
    first_seen: datetime
    last_seen: datetime


class Runner(RegistryRow):
    """A row of the runner registry (``GET /api/agent/runners``)."""

    id: str


class RunnerList(Returned):
    items: list[Runner]


class SeenComponent(RegistryRow):
    """A runner or component in pipeline-status, with how long ago it was last seen and its state: ``alive``
    (heartbeat within ``seen_limit_seconds``), ``stopped`` (its last heartbeat said so; ``info.stopped`` says why) or
    ``dead`` (silent past the limit). ``seen`` is ``state == "alive"``."""

    last_seen_seconds: float
    seen: bool
    state: str = "alive"
    seen_limit_seconds: float | None = None


class AttentionFlag(Returned):
    """Something an operator should look at, named by ``rule`` (a rule of coherence_network.health, or a monitor's on
    its host). ``severity`` grades it the same in every view: critical and high need attention, medium is a warning,
    low information.
    ``command`` is pasteable as it is (the real ids in it); ``console`` the console page with its button, if any."""

    rule: str
    message: str
    task_ids: list[int] = []
    severity: str = "medium"
    action: str = ""
    runbook: str = ""
    command: str = ""
    console: str | None = None
    source: str = "rule"  # "monitor": a fact of a monitor's host (disk, logs, version on disk), not a health rule
    host: str | None = None  # the monitor's host, for source "monitor"
    since: datetime | None = None  # when the monitor first saw it


PAUSE_ALL = "all"  # the scope of a pause of the whole pipeline (any other scope is a task type)
PAUSE_SCOPES = (PAUSE_ALL, *(t.value for t in TaskType))


class Pause(Returned):
    """A paused scope: ``all`` (the whole pipeline) or a task type. Claims hand out nothing of it; running tasks
    finish."""

    scope: str
    since: datetime
    by: str  # the actor, e.g. cli:alice
    reason: str


class PauseList(Returned):
    """``GET /api/agent/pauses``: the scopes paused now, oldest first."""

    pauses: list[Pause]


class PauseChange(Returned):
    """The answer to a pause or a resume: ``changed`` False when it was already so (a pause then shows the first
    pause, kept as it was; a resume of what was not paused shows none)."""

    changed: bool
    pause: Pause | None = None


class PipelineStatus(Returned):
    """``GET /api/agent/pipeline-status``: tasks by state, the project manager, runners and attention flags."""

    generated_at: datetime
    counts: TaskCount
    running: list[dict[str, Any]]
    oldest_running_log: list[str] | None = None
    pending: dict[str, dict[str, Any]]
    needs_decision: list[dict[str, Any]]
    recent: list[dict[str, Any]]
    success_24h: dict[str, Any]
    project_manager: SeenComponent | None = None
    runners: list[SeenComponent]
    components: dict[str, SeenComponent]
    attention: list[AttentionFlag]
    pauses: list[Pause] = []
    oldest_decision_seconds: float | None = None  # how long the longest-waiting decision has waited; None: none
    spend_today: dict[str, Any] | None = None  # today's spend against the day cap (contract_costs.Today's fields)


class MonitorIssue(Returned):
    """An open or resolved monitor issue: ``rule`` names it, as it names an attention flag."""

    id: int
    rule: str
    severity: str
    message: str
    action: str
    runbook: str
    detail: dict[str, Any] | None = None
    host: str
    first_seen: datetime
    last_seen: datetime
    resolved_at: datetime | None = None
    command: str = ""  # pasteable, as in AttentionFlag
    console: str | None = None


class MonitorIssueList(Returned):
    issues: list[MonitorIssue]
    recently_resolved: list[MonitorIssue] = []
    count: int


class FatalIssue(Returned):
    """A component the supervisor could not keep running (cleared by ``coherence fatal --clear``)."""

    id: int
    at: datetime
    component: str
    reason: str
    detail: str
    recovery_tried: str
    host: str
    cleared_at: datetime | None = None


class FatalIssueList(Returned):
    items: list[FatalIssue]
    count: int


class Health(Returned):
    """``GET /api/health``: the process answers (liveness; the store is not asked)."""

    status: str
    uptime_seconds: float


class ReadyCheck(Returned):
    name: str
    ok: bool
    detail: str = ""


class Readiness(Returned):
    """``GET /api/ready``: every check with its result; ``reason`` names the failed ones."""

    ready: bool
    checks: list[ReadyCheck]
    reason: str | None = None


class VersionInfo(Returned):
    """``GET /api/version``: the package version and git SHA of the code the API process runs."""

    version: str
    git_sha: str | None = None
