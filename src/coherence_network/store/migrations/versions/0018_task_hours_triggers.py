"""The hourly rollup kept by the database itself, in shards (issue 23).

Triggers on tasks count a task in ``task_hours`` when it is stored or updated settled (completed, failed or
cancelled, with a finish time) and take it back when an update moves it out of that (a retry) or changes what was
counted. Until now each move that settled a task sent the rollup's upsert as a statement of its own: a round trip
and a statement's client-side cost per finish. Deleting a task (retention) leaves its hour counted, as before.

An hour and type are counted in up to SHARDS rows (the new key column ``shard``; reads sum them): on PostgreSQL each
connection writes the shard its server process picks (pid modulo SHARDS), so runners finishing tasks of one type at
once no longer queue for one row's lock until their transactions commit (with four runners that lock cost a third of
the throughput). SQLite has one writer at a time: it writes shard 0.

The buckets and the hour are revision 0016's, which filled the rollup from the tasks then stored: a bucket k of a
duration counts values in [bound k-1, bound k) (bucket 0 below the first bound, the last from the last bound up).

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

BOUNDS = tuple(0.1 * 2 ** (k / 2) for k in range(45))  # revision 0016's
OUTCOMES = ("cancelled", "completed", "failed")
DURATIONS = {"run": "run_seconds", "queue": "queue_seconds"}
COLUMNS = [*OUTCOMES, *(f"{name}_{k:02d}" for name in DURATIONS for k in range(len(BOUNDS) + 1))]
WATCHED = ("task_type", "status", "finished_at", "run_seconds", "queue_seconds")  # what the rollup counts
SQLITE_TRIGGERS = ("task_hours_on_insert", "task_hours_on_update")
SHARDS = 8


def _counts(row: str, sign: str) -> list[str]:
    """Each column's value for the task ``row`` (NEW or OLD): ``sign`` where it counts, else 0."""
    values = [f"CASE WHEN {row}.status = '{name}' THEN {sign} ELSE 0 END" for name in OUTCOMES]
    for column in DURATIONS.values():
        edges = [repr(bound) for bound in BOUNDS]
        conditions = [f"{row}.{column} < {edges[0]}",
                      *(f"{row}.{column} >= {low} AND {row}.{column} < {high}" for low, high in zip(edges, edges[1:])),
                      f"{row}.{column} >= {edges[-1]}"]
        values += [f"CASE WHEN {condition} THEN {sign} ELSE 0 END" for condition in conditions]
    return values


def _counted(row: str) -> str:
    return f"{row}.status IN ({', '.join(repr(name) for name in OUTCOMES)}) AND {row}.finished_at IS NOT NULL"


def _upsert(row: str, sign: str, hour: str, shard: str) -> str:
    """Add the task ``row`` to its hour's row when it counts (a SELECT with a WHERE: SQLite's upsert needs one)."""
    added = ", ".join(f"{name} = task_hours.{name} + excluded.{name}" for name in COLUMNS)
    return (f"INSERT INTO task_hours (hour, task_type, shard, {', '.join(COLUMNS)}) "
            f"SELECT {hour}, {row}.task_type, {shard}, {', '.join(_counts(row, sign))} WHERE {_counted(row)} "
            f"ON CONFLICT (hour, task_type, shard) DO UPDATE SET {added}")


def _changed() -> str:
    return " OR ".join(f"OLD.{name} IS DISTINCT FROM NEW.{name}" for name in WATCHED)


def _sqlite() -> list[str]:
    def hour(row: str) -> str:
        return f"CAST(strftime('%s', {row}.finished_at) AS INTEGER) / 3600"
    changed = _changed().replace("IS DISTINCT FROM", "IS NOT")
    return [
        f"CREATE TRIGGER IF NOT EXISTS task_hours_on_insert AFTER INSERT ON tasks WHEN {_counted('NEW')} "
        f"BEGIN {_upsert('NEW', '1', hour('NEW'), '0')}; END",
        f"CREATE TRIGGER IF NOT EXISTS task_hours_on_update AFTER UPDATE OF {', '.join(WATCHED)} ON tasks "
        f"WHEN {changed} "
        f"BEGIN {_upsert('OLD', '-1', hour('OLD'), '0')}; {_upsert('NEW', '1', hour('NEW'), '0')}; END",
    ]


def _postgresql() -> list[str]:
    def hour(row: str) -> str:
        return f"CAST(floor(extract(epoch FROM {row}.finished_at) / 3600) AS INTEGER)"
    shard = f"pg_backend_pid() % {SHARDS}"
    return [
        "CREATE FUNCTION task_hours_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF TG_OP = 'UPDATE' THEN {_upsert('OLD', '-1', hour('OLD'), shard)}; END IF; "
        f"{_upsert('NEW', '1', hour('NEW'), shard)}; RETURN NULL; END $$",
        f"CREATE TRIGGER task_hours_on_insert AFTER INSERT ON tasks FOR EACH ROW WHEN ({_counted('NEW')}) "
        "EXECUTE FUNCTION task_hours_count()",
        f"CREATE TRIGGER task_hours_on_update AFTER UPDATE OF {', '.join(WATCHED)} ON tasks FOR EACH ROW "
        f"WHEN ({_changed()}) EXECUTE FUNCTION task_hours_count()",
    ]


def _rollup(name: str, sharded: bool) -> sa.Table:
    """task_hours as revision 0016 made it, or keyed by shard too (made under ``name``, renamed once filled)."""
    key = [sa.Column("hour", sa.Integer, primary_key=True), sa.Column("task_type", sa.String(16), primary_key=True)]
    if sharded:
        key.append(sa.Column("shard", sa.SmallInteger, primary_key=True, server_default="0"))
    return op.create_table(name, *key, *(sa.Column(column, sa.Integer, nullable=False, server_default="0")
                                         for column in COLUMNS))


def _refill(sharded: bool) -> None:
    """Copy task_hours into its new shape (a small table: hours of the last month x task types); shards merge into
    one row on the way back. SQLite runs the table's DDL outside a transaction: a copy that an upgrade stopped
    partway left behind is dropped first, so the next upgrade goes through."""
    op.execute("DROP TABLE IF EXISTS task_hours_new")
    new = _rollup("task_hours_new", sharded)
    old = sa.table("task_hours", *(sa.column(name) for name in ("hour", "task_type", *COLUMNS)))
    if sharded:
        rows = sa.select(old.c.hour, old.c.task_type, *(old.c[name] for name in COLUMNS))
    else:
        rows = sa.select(old.c.hour, old.c.task_type, *(sa.func.sum(old.c[name]) for name in COLUMNS)).group_by(
            old.c.hour, old.c.task_type)
    op.execute(new.insert().from_select(["hour", "task_type", *COLUMNS], rows))
    op.drop_table("task_hours")
    op.rename_table("task_hours_new", "task_hours")


def upgrade() -> None:
    _refill(sharded=True)
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:  # its primary key's name follows the table's
        op.execute("ALTER TABLE task_hours RENAME CONSTRAINT task_hours_new_pkey TO task_hours_pkey")
    for statement in _postgresql() if postgres else _sqlite():
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("DROP FUNCTION task_hours_count() CASCADE")  # and the triggers that call it
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    _refill(sharded=False)
    if postgres:
        op.execute("ALTER TABLE task_hours RENAME CONSTRAINT task_hours_new_pkey TO task_hours_pkey")
