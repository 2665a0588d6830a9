"""Request bodies of the task API; pydantic turns bad input into 422 with field-level messages."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coherence_network.contract import TaskStatus, TaskType

FinishStatus = Literal[
    TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.NEEDS_DECISION, TaskStatus.PENDING
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskCreate(Strict):
    direction: str = Field(min_length=1, max_length=5000, description="What to do")
    task_type: TaskType
    command: str | None = Field(None, max_length=20000, description="Command line the runner executes")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first")
    max_attempts: int | None = Field(None, ge=1, le=100)
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400, description="Overrides AGENT_TASK_TIMEOUT")
    context: dict[str, Any] | None = None


class TaskPatch(Strict):
    """An operator's change: a decision for a needs_decision task, or ``status: pending`` to retry a failed one."""

    decision: str | None = Field(None, min_length=1, max_length=5000)
    decided_by: str | None = Field(None, min_length=1, max_length=200, description="Who answered, e.g. api:alice")
    status: Literal[TaskStatus.PENDING] | None = Field(None, description="pending retries a failed task")

    @model_validator(mode="after")
    def _one_change(self) -> "TaskPatch":
        if (self.decision is None) == (self.status is None):
            raise ValueError("give exactly one of decision or status")
        return self


class ClaimRequest(Strict):
    runner_id: str = Field(min_length=1, max_length=200)
    types: list[TaskType] | None = None
    wait_seconds: float = Field(0.0, ge=0, le=60, description="Wait this long for work before answering 204")
    lease_seconds: float | None = Field(None, gt=0, le=86400)
    request_id: str | None = Field(
        None, min_length=1, max_length=100,
        description="Names this claim: a retry with the same id returns the task this claim already got",
    )


class TaskHeartbeat(Strict):
    claim_token: int = Field(ge=1)
    progress_pct: float | None = Field(None, ge=0, le=100)
    current_step: str | None = Field(None, max_length=500)
    lease_seconds: float | None = Field(None, gt=0, le=86400)


class TaskFinish(Strict):
    claim_token: int = Field(ge=1)
    status: FinishStatus
    output: str | None = Field(None, max_length=2_000_000)
    exit_code: int | None = None
    decision_prompt: str | None = Field(None, min_length=1, max_length=5000)

    @model_validator(mode="after")
    def _question_for_decision(self) -> "TaskFinish":
        if self.status is TaskStatus.NEEDS_DECISION and not self.decision_prompt:
            raise ValueError("status needs_decision requires decision_prompt")
        return self


class RunnerHeartbeat(Strict):
    runner_id: str = Field(min_length=1, max_length=200)
    host: str = Field(min_length=1, max_length=255)
    pid: int = Field(ge=1)
    version: str = Field(min_length=1, max_length=100)
    info: dict[str, Any] | None = None
