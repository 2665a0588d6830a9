"""Steering: the cancelled status, a failure's category and summary, an automatic retry's not_before, a cancel's
request, per-type policies (running limit, retry backoff, circuit breaker) and the audit trail.

SQLite cannot change a CHECK constraint in place: batch mode copies ``tasks`` into a new table. That copy drops the
FTS triggers of revision 0009 with the old table and re-creates indexes from reflection, which loses DESC; so the
triggers are dropped before and created again after (frozen copies of 0009's text), and the two DESC indexes are
built again from their definition. PostgreSQL alters the table in place.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Frozen copies of coherence_network.contract's TaskStatus before and at this revision.
OLD_STATUSES = ("pending", "running", "completed", "failed", "needs_decision")
STATUSES = (*OLD_STATUSES, "cancelled")
NEW_COLUMNS = (
    ("error_category", sa.String(32)),
    ("error_summary", sa.Text),
    ("not_before", sa.DateTime(timezone=True)),
    ("cancel_requested_at", sa.DateTime(timezone=True)),
    ("cancelled_by", sa.String(200)),
    ("cancel_reason", sa.Text),
)
DESC_INDEXES = {"ix_tasks_claim_order": ["status", sa.text("priority DESC"), "id"],
                "ix_tasks_priority_id": [sa.text("priority DESC"), "id"]}
# Revision 0009's SQLite triggers, frozen here.
FTS = "tasks_fts"
FTS_COLUMNS = "direction, output, decision_prompt"
_OLD = "'delete', old.id, old.direction, old.output, old.decision_prompt"
_NEW = "new.id, new.direction, new.output, new.decision_prompt"
FTS_TRIGGERS = {
    "insert": f"CREATE TRIGGER {FTS}_insert AFTER INSERT ON tasks BEGIN "
              f"INSERT INTO {FTS}(rowid, {FTS_COLUMNS}) VALUES ({_NEW}); END",
    "delete": f"CREATE TRIGGER {FTS}_delete AFTER DELETE ON tasks BEGIN "
              f"INSERT INTO {FTS}({FTS}, rowid, {FTS_COLUMNS}) VALUES ({_OLD}); END",
    "update": f"CREATE TRIGGER {FTS}_update AFTER UPDATE OF {FTS_COLUMNS} ON tasks "
              "WHEN old.direction IS NOT new.direction OR old.output IS NOT new.output "
              "OR old.decision_prompt IS NOT new.decision_prompt BEGIN "
              f"INSERT INTO {FTS}({FTS}, rowid, {FTS_COLUMNS}) VALUES ({_OLD}); "
              f"INSERT INTO {FTS}(rowid, {FTS_COLUMNS}) VALUES ({_NEW}); END",
}


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _rebuild_tasks(statuses: tuple[str, ...], change: Callable[[BatchOperations], None]) -> None:
    """Apply ``change`` to a batch of ``tasks`` with the status CHECK set to ``statuses``, keeping 0009's triggers
    and the DESC indexes on SQLite."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for trigger in FTS_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {FTS}_{trigger}")
    with op.batch_alter_table("tasks") as batch:
        change(batch)
        batch.drop_constraint("ck_tasks_status", type_="check")
        batch.create_check_constraint("ck_tasks_status", _one_of("status", statuses))
    if sqlite:
        for name, columns in DESC_INDEXES.items():
            op.drop_index(name, table_name="tasks")
            op.create_index(name, "tasks", columns)
        for statement in FTS_TRIGGERS.values():
            op.execute(statement)


def upgrade() -> None:
    def add_columns(batch: BatchOperations) -> None:
        for name, kind in NEW_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))

    _rebuild_tasks(STATUSES, add_columns)
    op.create_table(
        "type_policies",
        sa.Column("task_type", sa.String(16), primary_key=True),
        sa.Column("max_running", sa.Integer, nullable=True),
        sa.Column("retry_delay_seconds", sa.Float, nullable=True),
        sa.Column("retry_max_delay_seconds", sa.Float, nullable=True),
        sa.Column("breaker_failures", sa.Integer, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("task_id", sa.Integer, nullable=True),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("status_before", sa.String(16), nullable=True),
        sa.Column("status_after", sa.String(16), nullable=True),
        sa.Column("detail", sa.JSON, nullable=True),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_task", "audit", ["task_id", "id"])
    op.create_index("ix_audit_action", "audit", ["action", "id"])


def downgrade() -> None:
    op.drop_table("audit")
    op.drop_table("type_policies")
    op.execute("UPDATE tasks SET status = 'failed' WHERE status = 'cancelled'")

    def drop_columns(batch: BatchOperations) -> None:
        for name, _ in reversed(NEW_COLUMNS):
            batch.drop_column(name)

    _rebuild_tasks(OLD_STATUSES, drop_columns)
