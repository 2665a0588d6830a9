"""Stored durations of finished runs (run_seconds, queue_seconds), backfilled, and the metrics index over them.

Metrics used to compute finished_at - started_at and started_at - created_at for every row of a window; now the
UPDATE that ends a run stores both, and the window index covers them, so the metrics read only the index.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OLD_WINDOW_INDEX = "ix_tasks_finished_window"
WINDOW_INDEX = "ix_tasks_finished_durations"
# Seconds between two timestamp columns, per backend (the same arithmetic the store uses, copied: a revision
# imports no live code).
_SECONDS = {
    "sqlite": "(julianday({end}) - julianday({start})) * 86400.0",
    "postgresql": "EXTRACT(EPOCH FROM {end} - {start})",
}


def upgrade() -> None:
    op.add_column("tasks", sa.Column("run_seconds", sa.Float, nullable=True))
    op.add_column("tasks", sa.Column("queue_seconds", sa.Float, nullable=True))
    seconds = _SECONDS[op.get_bind().dialect.name]
    run = seconds.format(start="started_at", end="finished_at")
    queue = seconds.format(start="created_at", end="started_at")
    op.execute(
        f"UPDATE tasks SET run_seconds = {run}, queue_seconds = {queue} "
        "WHERE finished_at IS NOT NULL AND started_at IS NOT NULL"
    )
    op.drop_index(OLD_WINDOW_INDEX, table_name="tasks")
    op.create_index(WINDOW_INDEX, "tasks", ["finished_at", "task_type", "status", "run_seconds", "queue_seconds"])


def downgrade() -> None:
    op.drop_index(WINDOW_INDEX, table_name="tasks")
    op.create_index(
        OLD_WINDOW_INDEX, "tasks", ["finished_at", "task_type", "status", "started_at", "created_at"]
    )
    op.drop_column("tasks", "queue_seconds")
    op.drop_column("tasks", "run_seconds")
