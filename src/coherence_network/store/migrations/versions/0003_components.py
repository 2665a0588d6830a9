"""Component heartbeats (the project manager's state summary) and the index behind windowed task statistics.

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

# What coherence_network.store.schema.UTCDateTime renders in DDL, copied: a revision imports no live code that
# could change under it.
UTCDateTime = sa.DateTime(timezone=True)

revision = "0003"
down_revision = "0001"  # 0002 was never used: the graph tables came later, as 0005
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "components",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("info", sa.JSON, nullable=True),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ix_tasks_finished_window", "tasks", ["finished_at", "task_type", "status", "started_at", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_finished_window", table_name="tasks")
    op.drop_table("components")
