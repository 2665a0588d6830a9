"""Retries that heal and the circuit breaker: an index on (status, not_before), so a waiting claim finds when the
next automatic retry is due in one seek, and the table ``type_failures`` (each task type's failed runs in a row).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_status_not_before", "tasks", ["status", "not_before"])
    op.create_table(
        "type_failures",
        sa.Column("task_type", sa.String(16), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("type_failures")
    op.drop_index("ix_tasks_status_not_before", table_name="tasks")
