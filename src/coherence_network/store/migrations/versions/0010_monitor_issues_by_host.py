"""Monitor issues keyed by (host, rule): one host's monitor resolves only its own host's issues.

Before, the open set was keyed by rule alone, so a monitor on host B that did not see host A's full disk resolved
it. Open rows that repeat a (host, rule) pair (two replicas racing, which nothing prevented) are resolved first,
keeping the newest, at the time they were last seen; then a unique index on the open rows holds the key, and it
also serves the look-up of one host's open issues.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEX = "ix_monitor_issues_open_host_rule"
OPEN = sa.text("resolved_at IS NULL")


def upgrade() -> None:
    op.execute(
        "UPDATE monitor_issues SET resolved_at = last_seen WHERE resolved_at IS NULL AND id < ("
        "SELECT max(newer.id) FROM monitor_issues AS newer WHERE newer.resolved_at IS NULL "
        "AND newer.host = monitor_issues.host AND newer.rule = monitor_issues.rule)"
    )
    op.create_index(INDEX, "monitor_issues", ["host", "rule"], unique=True, sqlite_where=OPEN,
                    postgresql_where=OPEN)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="monitor_issues")
