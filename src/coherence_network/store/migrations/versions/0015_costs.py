"""Costs and caps: the operator's cost caps (one row per cap an operator set: task, item or day, in US dollars; 0 is
no cap; a cap nobody set takes its setting's default), and the spend ledger (one row per finished run that reported
a cost or tokens, appended by its finish, so a retried task's earlier runs still count and today's spend is a sum
over an index on the time), and on each task the cost its running run has reported so far (running_cost_usd: set
by heartbeats, cleared by the finish), so the day cap counts the work going on too.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("running_cost_usd", sa.Float, nullable=True))
    op.create_table(
        "cost_caps",
        sa.Column("cap", sa.String(8), primary_key=True),
        sa.Column("usd", sa.Float, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "spend",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_id", sa.Integer, nullable=False),
        sa.Column("item", sa.String(200), nullable=True),
        sa.Column("agent", sa.String(32), nullable=True),
        sa.Column("tokens_in", sa.BigInteger, nullable=True),
        sa.Column("tokens_out", sa.BigInteger, nullable=True),
        sa.Column("cost_usd", sa.Float, nullable=True),
    )
    op.create_index("ix_spend_at", "spend", ["at"])
    op.create_index("ix_spend_item", "spend", ["item"], sqlite_where=sa.text("item IS NOT NULL"),
                    postgresql_where=sa.text("item IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_spend_item", table_name="spend")
    op.drop_index("ix_spend_at", table_name="spend")
    op.drop_table("spend")
    op.drop_table("cost_caps")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("running_cost_usd")
