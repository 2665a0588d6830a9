"""An index for a page of tasks in one status, newest first (the console's and GET /api/agent/tasks' filter).

Without it a status filter ordered by id sorted every task in that status for each page: 85 ms for page 50 of the
failed tasks at 100,000 stored, where the index walk is a few milliseconds.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEX = "ix_tasks_status_id"


def upgrade() -> None:
    op.create_index(INDEX, "tasks", ["status", "id"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="tasks")
