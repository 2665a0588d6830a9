"""Two indexes on tasks that no query needs (issue 23): every create wrote them and every claim, heartbeat and
finish rewrote ``ix_tasks_status_lease`` (the lease moves each time); without them a create costs about 7 % less
CPU and a finish about 9 % less (bench/README.md, "Speed (issue 23)").

- ``ix_tasks_finished_at``: ``ix_tasks_finished_durations`` begins with ``finished_at`` and serves every read of it.
- ``ix_tasks_status_lease``: the reaper and the orphan rule read only running tasks, a few per runner slot, which
  any index that begins with ``status`` finds; the lease itself is then compared on those few rows.

Revision ID: 0017
Revises: 0016
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_tasks_finished_at", table_name="tasks")
    op.drop_index("ix_tasks_status_lease", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_status_lease", "tasks", ["status", "lease_expires_at"])
    op.create_index("ix_tasks_finished_at", "tasks", ["finished_at"])
