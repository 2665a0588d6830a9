"""Indexes of tasks that hold only the rows their reads ask for (issue 23): a create wrote all four, and a claim
rewrote three of them (each holds ``status``) for rows no read of theirs can find.

- ``ix_tasks_type_status`` (task_type, status) goes: every read of it names a status (running tasks by type, the
  failed out of attempts, a type's running count), which ``ix_tasks_status_type_created`` (status, task_type,
  created_at) answers the same way; a read of a type alone walks ``ix_tasks_type_id``.
- ``ix_tasks_status_not_before`` keeps only tasks with a ``not_before`` (an automatic retry waiting out its
  backoff): its one read asks for ``not_before > now``, which no other row has.
- ``ix_tasks_claim_request_id`` keeps only claimed tasks: its reads look one request id up.
- ``ix_tasks_finished_durations`` keeps only finished tasks: its reads are windows and orders of ``finished_at``.

Each of those reads compares the column, which both stores take as proof the row is in the partial index.

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# name -> (columns, the column whose rows with a value are kept)
PARTIAL = {
    "ix_tasks_status_not_before": (["status", "not_before"], "not_before"),
    "ix_tasks_claim_request_id": (["claim_request_id"], "claim_request_id"),
    "ix_tasks_finished_durations": (["finished_at", "task_type", "status", "run_seconds", "queue_seconds"],
                                    "finished_at"),
}


def upgrade() -> None:
    op.drop_index("ix_tasks_type_status", table_name="tasks")
    for name, (columns, kept) in PARTIAL.items():
        op.drop_index(name, table_name="tasks")
        where = sa.text(f"{kept} IS NOT NULL")
        op.create_index(name, "tasks", columns, sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for name, (columns, _kept) in PARTIAL.items():
        op.drop_index(name, table_name="tasks")
        op.create_index(name, "tasks", columns)
    op.create_index("ix_tasks_type_status", "tasks", ["task_type", "status"])
