"""Real agents: each task's backlog item (with an index for an item's tasks), the usage its agent reported (agent,
model, tokens, cost), when it last printed anything, and the evidence its phase left (branch, commit, diffstat,
verdict, merge, push). All nullable: tasks made before keep NULL.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

COLUMNS = (
    ("item", sa.String(200)),
    ("agent", sa.String(32)),
    ("model", sa.String(200)),
    ("tokens_in", sa.BigInteger),
    ("tokens_out", sa.BigInteger),
    ("cost_usd", sa.Float),
    ("last_output_at", sa.DateTime(timezone=True)),
    ("evidence", sa.JSON),
)


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("tasks", sa.Column(name, kind, nullable=True))
    op.create_index("ix_tasks_item_id", "tasks", ["item", "id"], sqlite_where=sa.text("item IS NOT NULL"),
                    postgresql_where=sa.text("item IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_tasks_item_id", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
