"""The hourly rollup kept by the database itself (issue 23): triggers on tasks count a task in ``task_hours`` when it
is stored or updated settled (completed, failed or cancelled, with a finish time) and take it back when an update
moves it out of that (a retry) or changes what was counted. Until now each move that settled a task sent the
rollup's upsert as a statement of its own: a round trip and a statement's client-side cost per finish. Deleting a
task (retention) leaves its hour counted, as before.

The buckets and the hour are revision 0016's, which filled the rollup from the tasks then stored: a bucket k of a
duration counts values in [bound k-1, bound k) (bucket 0 below the first bound, the last from the last bound up).

Revision ID: 0018
Revises: 0017
"""

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


def _upsert(row: str, sign: str, hour: str) -> str:
    """Add the task ``row`` to its hour's row when it counts (a SELECT with a WHERE: SQLite's upsert needs one)."""
    added = ", ".join(f"{name} = task_hours.{name} + excluded.{name}" for name in COLUMNS)
    return (f"INSERT INTO task_hours (hour, task_type, {', '.join(COLUMNS)}) "
            f"SELECT {hour}, {row}.task_type, {', '.join(_counts(row, sign))} WHERE {_counted(row)} "
            f"ON CONFLICT (hour, task_type) DO UPDATE SET {added}")


def _changed() -> str:
    return " OR ".join(f"OLD.{name} IS DISTINCT FROM NEW.{name}" for name in WATCHED)


def _sqlite() -> list[str]:
    def hour(row: str) -> str:
        return f"CAST(strftime('%s', {row}.finished_at) AS INTEGER) / 3600"
    changed = _changed().replace("IS DISTINCT FROM", "IS NOT")
    return [
        f"CREATE TRIGGER task_hours_on_insert AFTER INSERT ON tasks WHEN {_counted('NEW')} "
        f"BEGIN {_upsert('NEW', '1', hour('NEW'))}; END",
        f"CREATE TRIGGER task_hours_on_update AFTER UPDATE OF {', '.join(WATCHED)} ON tasks WHEN {changed} "
        f"BEGIN {_upsert('OLD', '-1', hour('OLD'))}; {_upsert('NEW', '1', hour('NEW'))}; END",
    ]


def _postgresql() -> list[str]:
    def hour(row: str) -> str:
        return f"CAST(floor(extract(epoch FROM {row}.finished_at) / 3600) AS INTEGER)"
    return [
        "CREATE FUNCTION task_hours_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF TG_OP = 'UPDATE' THEN {_upsert('OLD', '-1', hour('OLD'))}; END IF; "
        f"{_upsert('NEW', '1', hour('NEW'))}; RETURN NULL; END $$",
        f"CREATE TRIGGER task_hours_on_insert AFTER INSERT ON tasks FOR EACH ROW WHEN ({_counted('NEW')}) "
        "EXECUTE FUNCTION task_hours_count()",
        f"CREATE TRIGGER task_hours_on_update AFTER UPDATE OF {', '.join(WATCHED)} ON tasks FOR EACH ROW "
        f"WHEN ({_changed()}) EXECUTE FUNCTION task_hours_count()",
    ]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _postgresql() if postgres else _sqlite():
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION task_hours_count() CASCADE")  # and the triggers that call it
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {trigger}")
