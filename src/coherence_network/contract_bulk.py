"""Bulk actions' contract: which statuses each action takes, and the answers of a preview and of an act. A module
of its own beside contract.py (which is near the house's line limit), imported by the API, the client and the CLI."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

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
