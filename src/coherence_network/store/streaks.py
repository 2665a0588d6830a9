"""The circuit breaker's count: each task type's failed runs in a row (table ``type_failures``). A failure adds one,
a success or an operator's resume of the type starts it again from nothing. Statements on the caller's connection,
inside its transaction, so the count moves with the finish (or the resume) that moves it."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from coherence_network.store.schema import type_failures

_ADD_ONE = (type_failures.update().where(type_failures.c.task_type == sa.bindparam("b_type"))
            .values(failures=type_failures.c.failures + 1, last_failed_at=sa.bindparam("b_at"))
            .returning(type_failures.c.failures))
# Only a count that is not already nothing is written: the common finish (a success, no streak) changes no row.
_ENDS = (type_failures.update().where(type_failures.c.task_type == sa.bindparam("b_type"), type_failures.c.failures > 0)
         .values(failures=0))


def failed_again(conn: sa.Connection, task_type: str, at: datetime) -> int:
    """Count one more failure of ``task_type`` in a row; how many there are now."""
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
    """A success of ``task_type``, or an operator resumed it: the next failure is the first in a row."""
    conn.execute(_ENDS, {"b_type": task_type})
