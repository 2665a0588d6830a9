"""Safe retries and the contract in the database: idempotency key and claim request id on tasks, CHECK constraints
on status and task type, and the claim index repaired on stores created before it was renamed.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen copies of coherence_network.contract's TaskStatus and TaskType at this revision: a later change to the
# contract comes with a revision of its own, never as an edit here.
TASK_STATUSES = ("pending", "running", "completed", "failed", "needs_decision")
TASK_TYPES = ("spec", "test", "impl", "review", "heal", "run")
# The claim index's name before 3b55dc4 renamed it inside 0001: stores created earlier still have this one.
OLD_CLAIM_INDEX = "ix_tasks_status_priority"
CLAIM_INDEX = "ix_tasks_claim_order"


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    # Batch mode: SQLite cannot add a CHECK constraint in place, so the table is recreated (rows and indexes
    # copied, the claim index without its DESC: see below); PostgreSQL gets plain ALTER TABLE statements.
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(200), nullable=True))
        batch.add_column(sa.Column("claim_request_id", sa.String(100), nullable=True))
        batch.create_check_constraint("ck_tasks_status", _one_of("status", TASK_STATUSES))
        batch.create_check_constraint("ck_tasks_task_type", _one_of("task_type", TASK_TYPES))
    op.create_index("ix_tasks_idempotency_key", "tasks", ["idempotency_key"], unique=True)
    op.create_index("ix_tasks_claim_request_id", "tasks", ["claim_request_id"])
    # The claim index is built again from its definition: stores created before 3b55dc4 have it under its old name
    # without DESC, and SQLite's table copy above re-creates it from reflection, which drops the DESC.
    present = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("tasks")}
    for name in (OLD_CLAIM_INDEX, CLAIM_INDEX):
        if name in present:
            op.drop_index(name, table_name="tasks")
    op.create_index(CLAIM_INDEX, "tasks", ["status", sa.text("priority DESC"), "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_claim_request_id", table_name="tasks")
    op.drop_index("ix_tasks_idempotency_key", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint("ck_tasks_task_type", type_="check")
        batch.drop_constraint("ck_tasks_status", type_="check")
        batch.drop_column("claim_request_id")
        batch.drop_column("idempotency_key")
