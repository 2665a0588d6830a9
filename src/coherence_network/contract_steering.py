"""Steering's contract, beside contract.py: type policies, the audit trail's records, and bulk actions (which statuses
each takes, the answers of a preview and of an act). Imported by the API, the client, the CLI and the console."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from coherence_network.contract import Returned, TaskStatus


class BulkAction(StrEnum):
    """What a bulk action does to each task it takes."""

    CANCEL = "cancel"
    RETRY = "retry"


# The statuses each action can move a task out of: a filter's status outside them matches nothing it could act on.
BULK_STATUSES: dict[BulkAction, tuple[TaskStatus, ...]] = {
    BulkAction.CANCEL: (TaskStatus.PENDING, TaskStatus.NEEDS_DECISION, TaskStatus.RUNNING),
    BulkAction.RETRY: (TaskStatus.FAILED, TaskStatus.CANCELLED),
}
BULK_SAMPLE = 5  # tasks a preview shows
BULK_TOKEN_SECONDS = 600  # how long a preview's token can act


class BulkSampleTask(Returned):
    """One of the tasks a preview matched (its direction cut short)."""

    id: int
    task_type: str
    status: TaskStatus
    direction: str
    created_at: datetime


class BulkPreview(Returned):
    """``POST /api/agent/tasks/bulk/preview``: how many tasks the action would take now (``count``), the newest
    few, and the ``token`` that lets one act do it until ``expires_at``."""

    action: BulkAction
    count: int
    max_id: int | None = None  # the newest task matched: the act never takes a task created after the preview
    sample: list[BulkSampleTask]
    token: str
    expires_at: datetime


class BulkResult(Returned):
    """``POST /api/agent/tasks/bulk/act``: ``acted`` of the ``previewed`` tasks were moved; ``skipped`` matched but
    had changed meanwhile (``changed`` says the count differs from the preview's). ``repeated``: the token had acted
    before, and this answer is that act's, with nothing more done."""

    action: BulkAction
    previewed: int
    acted: int
    skipped: int
    changed: bool
    repeated: bool


# The fields of a type policy (table type_policies); a field not set (None) takes the setting's default.
PolicyField = Literal["max_running", "retry_delay_seconds", "retry_max_delay_seconds", "breaker_failures"]
POLICY_FIELDS: tuple[str, ...] = get_args(PolicyField)
BREAKER = "breaker"  # the actor of a pause the circuit breaker made (its `by`)


class TypePolicy(Returned):
    """One task type's policy: each field as an operator set it, None where the setting's default applies
    (``max_running`` None: no limit). ``running`` is how many of its tasks run now."""

    task_type: str
    max_running: int | None = None
    retry_delay_seconds: float | None = None
    retry_max_delay_seconds: float | None = None
    breaker_failures: int | None = None
    running: int = 0
    updated_at: datetime | None = None
    updated_by: str | None = None


class TypePolicyList(Returned):
    """``GET /api/agent/policies``: every task type's policy, and the defaults that apply where a field is None."""

    policies: list[TypePolicy]
    defaults: dict[str, float | int | None]


class TypePolicyChange(Returned):
    """The answer to ``PUT /api/agent/policies/{task_type}``: ``changed`` False when it was already so."""

    changed: bool
    policy: TypePolicy


AUDIT_CHANNELS = ("cli", "console", "telegram", "api")  # where an operator's action came from


def channel_of(actor: str) -> str:
    """The channel an actor spells before its colon (``cli:alice`` -> cli); anything else came through the API."""
    head = actor.split(":", 1)[0]
    return head if head in AUDIT_CHANNELS else "api"


class AuditRecord(Returned):
    """One operator action, kept in the append-only audit trail: who (``actor``) through which ``channel`` did
    ``action`` to what (a task, or a ``target`` such as a pause scope or a component), why, and the task's status
    before and after."""

    id: int
    at: datetime
    actor: str
    channel: str
    action: str
    task_id: int | None = None
    target: str | None = None
    reason: str | None = None
    status_before: str | None = None
    status_after: str | None = None
    detail: dict[str, Any] | None = None


class AuditPage(Returned):
    """A page of ``GET /api/audit``, newest first; ``next_before_id`` asks for the next (older) page, None at the
    end. A cursor, not an offset: records appended meanwhile never shift a page."""

    items: list[AuditRecord]
    limit: int
    next_before_id: int | None = None
