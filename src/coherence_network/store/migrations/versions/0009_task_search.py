"""Free-text search of tasks (direction, output, question) from an index, and indexes for sorted pages of tasks.

SQLite: an FTS5 table over tasks (external content: it stores the index, not a second copy of the text), kept in
step by triggers on insert, delete and updates of the three columns (a heartbeat or a claim touches none of them,
so it costs the index nothing), and filled from the rows already stored. A later revision that rebuilds ``tasks``
on SQLite (batch mode copies the table) drops these triggers with the old table: it must create them again.
PostgreSQL: a table beside tasks holding each task's text as a 'simple' tsvector (no stemming, no stop words: code
identifiers and any language are found as typed) under a GIN index, kept by triggers on insert and on updates of
the three columns, its rows deleted with their task (ON DELETE CASCADE). A GIN index on tasks itself would take
every lexeme again for each new row version (claims, heartbeats), text unchanged. Only the first 100,000
characters of the direction and question and the last 100,000 of the output are indexed there, so no task's text
can exceed the 1 MB a tsvector holds.

Sorted pages: an index per sortable column (id as the tie-break), so the first page of a sort walks an index
instead of sorting every task; priority in the claim's own order (priority DESC, id).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

FTS_TABLE = "tasks_fts"
COLUMNS = "direction, output, decision_prompt"
PG_TABLE = "task_search"
PG_DOCUMENT = (
    "to_tsvector('simple'::regconfig, left(coalesce(NEW.direction, '') || ' ' || coalesce(NEW.decision_prompt, ''), "
    "100000) || ' ' || right(coalesce(NEW.output, ''), 100000))"
)
PG_DDL = (
    f"CREATE TABLE {PG_TABLE} (task_id integer PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE, "
    "document tsvector NOT NULL)",
    f"CREATE INDEX ix_{PG_TABLE}_document ON {PG_TABLE} USING gin (document)",
    f"CREATE FUNCTION {PG_TABLE}_sync() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    f"INSERT INTO {PG_TABLE} (task_id, document) VALUES (NEW.id, {PG_DOCUMENT}) "
    "ON CONFLICT (task_id) DO UPDATE SET document = EXCLUDED.document; RETURN NULL; END $$",
    f"CREATE TRIGGER {PG_TABLE}_insert AFTER INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION {PG_TABLE}_sync()",
    f"CREATE TRIGGER {PG_TABLE}_update AFTER UPDATE OF {COLUMNS} ON tasks FOR EACH ROW "
    "WHEN (OLD.direction IS DISTINCT FROM NEW.direction OR OLD.output IS DISTINCT FROM NEW.output "
    f"OR OLD.decision_prompt IS DISTINCT FROM NEW.decision_prompt) EXECUTE FUNCTION {PG_TABLE}_sync()",
    f"INSERT INTO {PG_TABLE} (task_id, document) SELECT id, {PG_DOCUMENT.replace('NEW.', '')} FROM tasks",
    # Statistics now, not at autovacuum's next pass: without them a search's plan may read the whole table.
    f"ANALYZE {PG_TABLE}",
)
SORT_INDEXES = {
    "ix_tasks_priority_id": [sa.text("priority DESC"), "id"],
    "ix_tasks_type_id": ["task_type", "id"],
    "ix_tasks_created_id": ["created_at", "id"],
    "ix_tasks_updated_id": ["updated_at", "id"],
    "ix_tasks_attempts_id": ["attempts", "id"],
}
_OLD = "'delete', old.id, old.direction, old.output, old.decision_prompt"
_NEW = "new.id, new.direction, new.output, new.decision_prompt"
SQLITE_DDL = (
    f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5({COLUMNS}, content='tasks', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 0')",
    f"CREATE TRIGGER {FTS_TABLE}_insert AFTER INSERT ON tasks BEGIN "
    f"INSERT INTO {FTS_TABLE}(rowid, {COLUMNS}) VALUES ({_NEW}); END",
    f"CREATE TRIGGER {FTS_TABLE}_delete AFTER DELETE ON tasks BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, {COLUMNS}) VALUES ({_OLD}); END",
    f"CREATE TRIGGER {FTS_TABLE}_update AFTER UPDATE OF {COLUMNS} ON tasks "
    "WHEN old.direction IS NOT new.direction OR old.output IS NOT new.output "
    "OR old.decision_prompt IS NOT new.decision_prompt BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, {COLUMNS}) VALUES ({_OLD}); "
    f"INSERT INTO {FTS_TABLE}(rowid, {COLUMNS}) VALUES ({_NEW}); END",
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')",
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DDL:
            op.execute(statement)
    else:
        for statement in PG_DDL:
            op.execute(statement)
    for name, columns in SORT_INDEXES.items():
        op.create_index(name, "tasks", columns)


def downgrade() -> None:
    for name in SORT_INDEXES:
        op.drop_index(name, table_name="tasks")
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER {FTS_TABLE}_{trigger}")
        op.execute(f"DROP TABLE {FTS_TABLE}")
    else:
        op.execute(f"DROP TABLE {PG_TABLE}")  # its index with it
        op.execute(f"DROP FUNCTION {PG_TABLE}_sync() CASCADE")  # and the triggers that call it
