"""Revision 0017 dropped two indexes of tasks that no query needed, and 0019 made three partial and dropped one more
(issue 23): the reads they served still find their rows through an index, on both stores (test_schema_history
compares the indexes themselves, but not a partial index's WHERE)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.store.failures import _EXPIRED, _NEXT_DUE
from coherence_network.store.schema import type_failures
from coherence_network.store.statements import CLAIMED_BY_REQUEST
from coherence_network.store.streaks import _SUCCEEDED_SINCE
from coherence_network.store.type_policies import _RUNNING


def _plan(engine: sa.Engine, statement: sa.Executable) -> str:
    postgres = engine.dialect.name == "postgresql"
    sql = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if postgres:  # an empty table would be scanned whatever its indexes: plan as for a big one
            conn.exec_driver_sql("SET enable_seqscan = off")
        return " ".join(str(row) for row in conn.exec_driver_sql(("EXPLAIN " if postgres else "EXPLAIN QUERY PLAN ")
                                                                   + sql))


def test_the_reaper_reads_running_tasks_through_an_index(store_engine: sa.Engine) -> None:
    plan = _plan(store_engine, _EXPIRED.params(b_now=utcnow()))
    if store_engine.dialect.name == "postgresql":
        assert "Index" in plan and "Seq Scan" not in plan, plan
    else:
        assert "SEARCH tasks USING" in plan and "(status=?" in plan, plan


# Revision 0019: indexes that hold only the rows their reads ask for, and the (task_type, status) index gone. Each
# read must still go through the index named (a partial index serves a read only when its WHERE is implied). A read by
# claim request id also names a status, running, whose few rows both planners prefer: it must use some index.
_READS = {
    "next retry due": (lambda: _NEXT_DUE.params(b_now=utcnow()), "ix_tasks_status_not_before"),
    "a streak's completion since its last failure": (
        lambda: sa.select(type_failures.c.task_type).where(_SUCCEEDED_SINCE), "ix_tasks_finished_durations"),
    "running tasks by type": (lambda: _RUNNING, "ix_tasks_status_type_created"),
    "what a claim request got": (lambda: CLAIMED_BY_REQUEST.params(b_request="r-1", b_runner="runner"), None),
}


@pytest.mark.parametrize("read", sorted(_READS))
def test_each_read_of_a_partial_or_merged_index_still_uses_an_index(store_engine: sa.Engine, read: str) -> None:
    statement, index = _READS[read]
    plan = _plan(store_engine, statement())
    assert "Seq Scan" not in plan and "SCAN tasks" not in plan, plan
    assert index is None or index in plan, plan


def test_a_migrated_store_keeps_only_the_rows_each_partial_index_is_read_for(store_engine: sa.Engine) -> None:
    """The WHERE of each partial index as the store holds it (the schema comparison does not look at it), and the
    (task_type, status) index gone."""
    postgres = store_engine.dialect.name == "postgresql"
    query = ("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tasks'" if postgres
             else "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' AND sql IS NOT NULL")
    with store_engine.connect() as conn:
        defined = {name: sql for name, sql in conn.exec_driver_sql(query)}
    assert "ix_tasks_type_status" not in defined
    partial = {"ix_tasks_status_not_before": "not_before", "ix_tasks_claim_request_id": "claim_request_id",
               "ix_tasks_finished_durations": "finished_at"}
    for name, column in partial.items():
        assert re.search(rf"WHERE \(?{column} IS NOT NULL\)?$", defined[name]), defined[name]
