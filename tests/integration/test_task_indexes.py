"""Revision 0017 dropped two indexes of tasks that no query needed (issue 23): the reads they served still find
their rows through an index, on both stores (test_schema_history compares the indexes themselves)."""

from __future__ import annotations

import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.store.failures import _EXPIRED


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

