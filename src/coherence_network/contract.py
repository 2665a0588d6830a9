"""The one contract every side imports: task statuses and types, the legal moves between statuses, and the typed
models the API returns and the client reads.

Components used to agree on these only by convention (status strings spelled out in many modules, a payload field
guessed); with one module the store, the API, the client and every component cannot drift apart.
"""

from __future__ import annotations

from enum import Enum


class TaskStatus(str, Enum):
    """Where a task is in its life; the only moves between them are in LEGAL_MOVES."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    NEEDS_DECISION = "needs_decision"

    def __str__(self) -> str:
        return self.value


class TaskType(str, Enum):
    """What kind of work a task is: the phases of a backlog item, a heal task, or a plain `run:` command."""

    SPEC = "spec"
    TEST = "test"
    IMPL = "impl"
    REVIEW = "review"
    HEAL = "heal"
    RUN = "run"

    def __str__(self) -> str:
        return self.value


# Every legal move, and the action that makes it. Anything else is a conflict naming the current status.
LEGAL_MOVES: dict[tuple[TaskStatus, TaskStatus], str] = {
    (TaskStatus.PENDING, TaskStatus.RUNNING): "claim",
    (TaskStatus.RUNNING, TaskStatus.COMPLETED): "finish",
    (TaskStatus.RUNNING, TaskStatus.FAILED): "finish",
    (TaskStatus.RUNNING, TaskStatus.NEEDS_DECISION): "ask",
    (TaskStatus.RUNNING, TaskStatus.PENDING): "release or lease expiry",
    (TaskStatus.NEEDS_DECISION, TaskStatus.PENDING): "decide",
    (TaskStatus.FAILED, TaskStatus.PENDING): "retry",
}
# What a runner may report when it ends its claim.
FINISH_STATUSES = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.NEEDS_DECISION, TaskStatus.PENDING)
# Statuses a task leaves only by an operator's action (or never).
SETTLED_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED})
ACTIVE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})


def is_legal(current: TaskStatus, new: TaskStatus) -> bool:
    return (current, new) in LEGAL_MOVES
