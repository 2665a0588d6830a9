"""Every store that ran an earlier head reaches today's head with its rows intact (schema history is append-only).

The earlier heads (see tests/fixtures/schema_history/README.md): (a) 0001 before the claim index was renamed,
(b) 0001, (c) 0003, (d) 0004, (e) the renumbered graph chain 0001 -> 0002 (graph) -> 0003 -> 0004, (f) that
chain's 0002, (g) 0005, (h) 0006, (i) 0008 (before the search index); plus (a) later upgraded to 0005 by today's chain,
so it still has the old claim index.
Each is built by running the revisions it really ran, filled with rows, then upgraded by ``migrate()``.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from coherence_network.contract import TaskStatus, TaskType
from coherence_network.store import TaskStore, schema
from coherence_network.store.db import (
    MIGRATIONS_DIR,
    alembic_config,
    create_store_engine,
    current_revision,
    head_revision,
    migrate,
)

HISTORY = Path(__file__).parents[1] / "fixtures" / "schema_history"
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
GRAPH_TABLES = {"projects", "dependencies", "index_frontier"}
CLAIM_INDEX = "ix_tasks_claim_order"
DESC_INDEXES = (CLAIM_INDEX, "ix_tasks_priority_id")  # priority DESC: the claim's order, and sorted pages' by it


@dataclass(frozen=True)
class OldHead:
    """A state a store may be in: the revisions it ran (a fixture chain, or today's) and the revision it is at."""

    chain: str | None  # folder under HISTORY; None means today's revisions (frozen, so identical to what ran)
    revision: str
    then_today: str | None = None  # afterwards upgraded by today's chain to this revision


OLD_HEADS = {
    "a_0001_before_index_rename": OldHead("a_ff31202", "0001"),
    "a_then_upgraded_to_0005": OldHead("a_ff31202", "0001", then_today="0005"),
    "b_0001": OldHead(None, "0001"),
    "c_0003": OldHead(None, "0003"),
    "d_0004": OldHead(None, "0004"),
    "e_old_graph_chain_0004": OldHead("e_5e99590", "0004"),
    "f_old_0002": OldHead("e_5e99590", "0002"),
    "g_0005": OldHead(None, "0005"),
    "h_0006": OldHead(None, "0006"),
    "i_0008": OldHead(None, "0008"),
}


# Revisions of an old chain that are byte for byte today's (frozen by tests/unit/test_revisions_frozen.py): the
# fixture folder keeps only the files that differ, and the chain is put together from both.
SHARED_WITH_TODAY = {"e_5e99590": ("0001_tasks.py", "0004_ops_issues.py")}


@functools.cache
def _chain_dir(chain: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"schema-{chain}-"))
    for revision in (HISTORY / chain).glob("*.py"):
        shutil.copy(revision, folder)
    for name in SHARED_WITH_TODAY.get(chain, ()):
        shutil.copy(MIGRATIONS_DIR / "versions" / name, folder)
    return folder


def _config(engine: Engine, chain: str | None) -> Config:
    """Today's Alembic environment, running either today's revisions or a frozen old chain."""
    config = alembic_config(engine)
    if chain is not None:
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", str(_chain_dir(chain)))
    return config


def _build(engine: Engine, head: OldHead) -> None:
    command.upgrade(_config(engine, head.chain), head.revision)
    if head.then_today:
        command.upgrade(_config(engine, None), head.then_today)


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _task(direction: str, task_type: TaskType, status: TaskStatus, **fields: Any) -> dict[str, Any]:
    """A task row as the first revision knows it (every row with the same keys, as one multi-row insert needs)."""
    row: dict[str, Any] = dict.fromkeys(
        ("claimed_by", "lease_expires_at", "started_at", "finished_at", "command", "exit_code", "output",
         "decision_prompt", "context")
    )
    row.update(direction=direction, task_type=task_type, status=status, priority=0, claim_token=0, attempts=0)
    return row | fields


def _seed(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Rows in every table the store has, written with only the columns it has; returns what was written."""
    rows: dict[str, list[dict[str, Any]]] = {
        "tasks": [
            _task("high pending", TaskType.IMPL, TaskStatus.PENDING, priority=5),
            _task("low pending", TaskType.SPEC, TaskStatus.PENDING, priority=1),
            _task("running", TaskType.TEST, TaskStatus.RUNNING, claimed_by="r1", claim_token=1, attempts=1,
                  lease_expires_at=T0 + timedelta(minutes=5), started_at=T0),
            _task("done", TaskType.RUN, TaskStatus.COMPLETED, command="true", exit_code=0, output="ok\n",
                  started_at=T0, finished_at=T0 + timedelta(seconds=3)),
            _task("broke", TaskType.REVIEW, TaskStatus.FAILED, exit_code=1, finished_at=T0 + timedelta(seconds=9)),
            _task("ask", TaskType.HEAL, TaskStatus.NEEDS_DECISION, decision_prompt="keep?",
                  context={"item": 3, "notes": ["a", "b"]}),
        ],
        "runners": [{"id": "r1", "host": "h", "pid": 10, "version": "0.1", "first_seen": T0, "last_seen": T0}],
        "components": [{"name": "project_manager", "host": "h", "pid": 11, "version": "0.1", "info": {"item": 3},
                        "first_seen": T0, "last_seen": T0}],
        "monitor_issues": [{"rule": "no_runner", "severity": "high", "message": "m", "action": "a", "runbook": "#r",
                            "host": "h", "first_seen": T0, "last_seen": T0}],
        "fatal_issues": [{"at": T0, "component": "api", "reason": "r", "detail": "d", "recovery_tried": "x",
                          "host": "h"}],
        "projects": [{"id": 1, "ecosystem": "npm", "name": "left-pad", "version": "1.3.0", "status": "ok",
                      "indexed_at": T0}],
        "dependencies": [{"project_id": 1, "to_ecosystem": "npm", "to_name": "pad", "requirement": "^1",
                          "kind": "runtime"}],
        "index_frontier": [{"ecosystem": "npm", "name": "left-pad", "depth": 0, "state": "done"}],
    }
    for i, task in enumerate(rows["tasks"]):
        task.update(id=i + 1, created_at=T0 + timedelta(seconds=i), updated_at=T0 + timedelta(seconds=i))
    present = {name: written for name, written in rows.items() if name in _tables(engine)}
    with engine.begin() as conn:
        for name, written in present.items():
            conn.execute(sa.insert(schema.metadata.tables[name]), written)
    return present


def _read(engine: Engine, name: str, columns: list[str]) -> list[dict[str, Any]]:
    table = schema.metadata.tables[name]
    with engine.connect() as conn:
        result = conn.execute(sa.select(*(table.c[c] for c in columns)).order_by(*table.primary_key.columns))
        return [dict(row._mapping) for row in result]


def _index_sql(engine: Engine) -> dict[str, str]:
    """Each named index with the SQL that defines it (the sort order of a column shows only there)."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            query = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        else:
            query = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
        return {name: sql for name, sql in conn.execute(sa.text(query))}


def _snapshot(engine: Engine) -> dict[str, Any]:
    """Tables, columns, indexes and CHECK constraints, to see that a second upgrade changes nothing."""
    inspector = sa.inspect(engine)
    return {
        table: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            sorted(c["name"] or "" for c in inspector.get_check_constraints(table)),
        )
        for table in inspector.get_table_names()
    } | {"indexes": _index_sql(engine)}


def _schema_differences(engine: Engine) -> list[Any]:
    """What autogenerate would write to bring the store to schema.metadata, less what it cannot see.

    Allowed to differ: Alembic's own table, the search index's tables (revision 0009 makes them in each backend's
    own SQL, outside the metadata; tests/integration/test_task_search.py checks them), and on SQLite the indexes
    with a DESC column, which SQLAlchemy's SQLite reflection does not report (autogenerate then sees another
    index); their SQL is checked instead (_index_sql).
    """
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), schema.metadata)

    def unseen(diff: Any) -> bool:
        kind, item = diff[0], diff[1]
        if kind == "remove_table":
            return bool(item.name == "alembic_version" or item.name in schema.SEARCH_TABLES)
        if kind == "remove_index" and item.table.name in schema.SEARCH_TABLES:
            return True
        return engine.dialect.name == "sqlite" and kind in ("add_index", "remove_index") and item.name in DESC_INDEXES

    return [diff for diff in diffs if not unseen(diff)]


@pytest.mark.parametrize("name", list(OLD_HEADS))
def test_a_store_at_an_earlier_head_upgrades_to_head_with_its_rows(store_url: str, name: str) -> None:
    engine = create_store_engine(store_url)
    head = OLD_HEADS[name]
    _build(engine, head)
    at = head.then_today or head.revision
    assert current_revision(engine) == at
    written = _seed(engine)
    assert ("projects" in written) == (head.chain == "e_5e99590" or at >= "0005")

    before, after = migrate(engine)

    assert (before, after) == (at, head_revision(engine))
    assert GRAPH_TABLES <= _tables(engine)
    for table, rows in written.items():
        assert _read(engine, table, list(rows[0])) == rows, f"{table}: rows changed by the upgrade"
    assert _read(engine, "tasks", ["idempotency_key", "claim_request_id"]) == [
        {"idempotency_key": None, "claim_request_id": None}
    ] * len(written["tasks"])

    indexes = _index_sql(engine)
    assert "ix_tasks_status_priority" not in indexes
    assert all("priority DESC" in indexes[name] for name in DESC_INDEXES)
    expected_indexes = {ix.name for table in schema.metadata.tables.values() for ix in table.indexes}
    assert expected_indexes <= set(indexes), f"indexes missing after the upgrade: {expected_indexes - set(indexes)}"
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE tasks SET status = 'bogus' WHERE id = 1"))
    store = TaskStore(engine)
    # rows stored before the search index existed are found: in the direction, the output and the question
    assert [[t["id"] for t in store.list(search=word)[0]] for word in ("broke", "ok", "keep")] == [[5], [4], [6]]
    assert store.claim("r2")["id"] == 1  # the highest-priority pending task, through today's code

    snapshot = _snapshot(engine)
    assert migrate(engine) == (head_revision(engine), head_revision(engine))
    assert _snapshot(engine) == snapshot, "a second upgrade changed the schema"
    assert _schema_differences(engine) == []
    engine.dispose()


def test_a_fresh_store_and_schema_metadata_agree(store_url: str) -> None:
    """A store made by migrations and one made from metadata have the same tables, columns, indexes and checks."""
    migrated = create_store_engine(store_url)
    migrate(migrated)
    assert _schema_differences(migrated) == []
    checks = {c["name"]: c["sqltext"] for c in sa.inspect(migrated).get_check_constraints("tasks")}
    declared = {c.name: str(c.sqltext) for c in schema.tasks.constraints if isinstance(c, sa.CheckConstraint)}
    assert set(checks) == set(declared) == {"ck_tasks_status", "ck_tasks_task_type"}
    migrated.dispose()


def test_the_database_holds_the_contract(store_url: str) -> None:
    """CHECK constraints accept exactly the contract's statuses and types; an idempotency key is unique."""
    engine = create_store_engine(store_url)
    migrate(engine)
    tasks = schema.tasks
    row = {"direction": "d", "created_at": T0, "updated_at": T0}
    with engine.begin() as conn:
        for status in TaskStatus:
            conn.execute(sa.insert(tasks), {**row, "task_type": TaskType.RUN, "status": status})
        for task_type in TaskType:
            conn.execute(sa.insert(tasks), {**row, "task_type": task_type, "status": TaskStatus.PENDING})
        conn.execute(sa.insert(tasks), [{**row, "task_type": TaskType.RUN, "claim_request_id": "c1"}] * 2)
        conn.execute(sa.insert(tasks), {**row, "task_type": TaskType.RUN, "idempotency_key": "k1"})
    for bad in ({"status": "done"}, {"task_type": "deploy"}, {"task_type": TaskType.RUN, "idempotency_key": "k1"}):
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.insert(tasks), {**row, "task_type": TaskType.RUN, **bad})
    with engine.connect() as conn:
        keyless = conn.scalar(sa.select(sa.func.count()).where(tasks.c.idempotency_key.is_(None)))
    assert keyless == len(TaskStatus) + len(TaskType) + 2  # many tasks without a key: NULLs never collide
    engine.dispose()


def test_a_store_with_only_part_of_the_graph_tables_is_refused(store_url: str) -> None:
    """No known history leaves some graph tables without the others: guessing could stamp a broken store as head."""
    engine = create_store_engine(store_url)
    command.upgrade(_config(engine, None), "0004")
    schema.projects.create(engine)
    with pytest.raises(RuntimeError, match=r"only some graph tables \(\['projects'\]\)"):
        migrate(engine)
    assert current_revision(engine) == "0004"
    engine.dispose()
