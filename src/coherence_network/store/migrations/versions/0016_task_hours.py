"""Reads from a rollup (issue 23): the table ``task_hours``, one row per (UTC hour, task type) of the tasks that
settled in it (completed, failed, cancelled) with their run times and queue waits counted in log-spaced buckets,
filled here from the settled tasks already stored (so an upgraded store's metrics and charts keep their figures),
and the index (status, task_type, created_at) that pipeline-status's pending-by-type reads alone.

The hour is whole hours since 1970-01-01 UTC. Bucket 0 of a duration holds values under 0.1 s, bucket k (1..44)
those in [0.1 * 2 ** ((k - 1) / 2), 0.1 * 2 ** (k / 2)), bucket 45 everything from 0.1 * 2 ** 22 s (4.9 days) up.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

BOUNDS = tuple(0.1 * 2 ** (k / 2) for k in range(45))
OUTCOMES = ("cancelled", "completed", "failed")
DURATIONS = {"run": "run_seconds", "queue": "queue_seconds"}
_tasks = sa.table("tasks", sa.column("task_type", sa.String), sa.column("status", sa.String),
                  sa.column("finished_at", sa.DateTime), sa.column("run_seconds", sa.Float),
                  sa.column("queue_seconds", sa.Float))


def _buckets(column: sa.ColumnClause[float]) -> list[sa.ColumnElement[bool]]:
    """Each bucket's condition on a duration, in bucket order (NULL is in none)."""
    edges = [sa.literal_column(repr(bound)) for bound in BOUNDS]
    return [column < edges[0], *(sa.and_(column >= low, column < high) for low, high in zip(edges, edges[1:])),
            column >= edges[-1]]


def _hour(postgres: bool) -> sa.ColumnElement[int]:
    finished = _tasks.c.finished_at
    if postgres:
        return sa.cast(sa.func.floor(sa.extract("epoch", finished) / 3600), sa.Integer)
    return sa.cast(sa.func.strftime("%s", finished), sa.Integer) // 3600


def upgrade() -> None:
    op.create_index("ix_tasks_status_type_created", "tasks", ["status", "task_type", "created_at"])
    columns = [sa.Column("hour", sa.Integer, primary_key=True), sa.Column("task_type", sa.String(16), primary_key=True)]
    columns += [sa.Column(name, sa.Integer, nullable=False, server_default="0") for name in OUTCOMES]
    columns += [sa.Column(f"{name}_{k:02d}", sa.Integer, nullable=False, server_default="0")
                for name in DURATIONS for k in range(len(BOUNDS) + 1)]
    rollup = op.create_table("task_hours", *columns)
    hour = _hour(op.get_bind().dialect.name == "postgresql").label("hour")
    counted = [sa.func.count().filter(_tasks.c.status == name) for name in OUTCOMES]
    counted += [sa.func.count().filter(bucket) for column in DURATIONS.values()
                for bucket in _buckets(_tasks.c[column])]
    settled = (
        sa.select(hour, _tasks.c.task_type, *counted)
        .where(_tasks.c.status.in_(OUTCOMES), _tasks.c.finished_at.is_not(None))
        .group_by(hour, _tasks.c.task_type)
    )
    op.execute(rollup.insert().from_select([c.name for c in columns], settled))


def downgrade() -> None:
    op.drop_table("task_hours")
    op.drop_index("ix_tasks_status_type_created", table_name="tasks")
