"""The circuit breaker's count: each task type's failed runs in a row (table ``type_failures``).

A failure adds one; the count starts again from one when a run of the type completed since the type's last failure,
and from nothing when an operator resumes the type. A success writes nothing: whether one came between two failures
is read when the second failure counts, from the finished-tasks index, so the common finish costs no statement
more. Statements on the caller's connection, inside its transaction, so the count moves with the finish (or the
resume) that moves it."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from coherence_network.contract import TaskStatus
from coherence_network.store.schema import tasks, type_failures

# A completion of the type since its last failure, read from ix_tasks_finished_durations (finished_at first): the
# type and status are compared so that no other index serves them, else SQLite (no statistics) would walk every
# completed task of the type instead of those finished since the last failure.
_SUCCEEDED_SINCE = sa.exists().where(
    tasks.c.finished_at > type_failures.c.last_failed_at,
    tasks.c.task_type.concat("") == type_failures.c.task_type,
    tasks.c.status.concat("") == TaskStatus.COMPLETED.value,
)
_ADD_ONE = (type_failures.update().where(type_failures.c.task_type == sa.bindparam("b_type"))
            .values(failures=sa.case((_SUCCEEDED_SINCE, 1), else_=type_failures.c.failures + 1),
                    last_failed_at=sa.bindparam("b_at"))
            .returning(type_failures.c.failures))
_ENDS = (type_failures.update().where(type_failures.c.task_type == sa.bindparam("b_type"), type_failures.c.failures > 0)
         .values(failures=0))


def failed_again(conn: sa.Connection, task_type: str, at: datetime) -> int:
    """Count one more failure of ``task_type`` at ``at``; how many there are in a row now."""
    found = conn.execute(_ADD_ONE, {"b_type": task_type, "b_at": at}).scalar()
    if found is not None:
        return int(found)
    try:
        with conn.begin_nested():  # the type's first failure: a concurrent first failure may insert it too
            conn.execute(type_failures.insert().values(task_type=task_type, failures=1, last_failed_at=at))
        return 1
    except sa.exc.IntegrityError:
        return int(conn.execute(_ADD_ONE, {"b_type": task_type, "b_at": at}).scalar_one())


def streak_ends(conn: sa.Connection, task_type: str) -> None:
    """An operator resumed ``task_type``: its next failure is the first in a row."""
    conn.execute(_ENDS, {"b_type": task_type})
