"""Monitor issues and fatal issues, so every API replica answers /api/agent/monitor-issues and fatal-issues.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

# What coherence_network.store.schema.UTCDateTime renders in DDL, copied: a revision imports no live code that
# could change under it.
UTCDateTime = sa.DateTime(timezone=True)

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitor_issues",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("runbook", sa.String(200), nullable=False),
        sa.Column("detail", sa.JSON, nullable=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("resolved_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_monitor_issues_open", "monitor_issues", ["resolved_at", "rule"])
    op.create_table(
        "fatal_issues",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("component", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("recovery_tried", sa.Text, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("cleared_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_fatal_issues_open", "fatal_issues", ["cleared_at", "at"])


def downgrade() -> None:
    op.drop_index("ix_fatal_issues_open", table_name="fatal_issues")
    op.drop_table("fatal_issues")
    op.drop_index("ix_monitor_issues_open", table_name="monitor_issues")
    op.drop_table("monitor_issues")
