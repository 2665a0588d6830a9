"""Round trips per claim+finish cycle (counted by bench/round_trips.py on the engine), and what pre-ping did
instead: a connection the server dropped costs a read nothing."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine, migrate
from tests.support.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("round_trips_bench", ROOT / "bench" / "round_trips.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_cycle_costs_few_round_trips_and_one_call_fewer(store_url: str) -> None:
    counts = _bench().measure(store_url, 20)
    two, one = counts["claim + finish (two calls)"], counts["finish with claim_next (one call)"]
    # SQLite: a claim reads first (SELECT and the pool's reset: an empty queue takes no write lock), then UPDATE,
    # COMMIT; the finish UPDATE, COMMIT; in one call: UPDATE, UPDATE, COMMIT (already in a write transaction).
    # PostgreSQL adds a BEGIN per transaction and claims without a read first. Before issue 14: 6 and 12 (a replay
    # look-up, a ping per checkout); SQLite's are in-process calls, PostgreSQL's are network round trips. Since issue
    # 18 a SQLite claim takes the write lock with an empty UPDATE before it reads the clock its lease starts from.
    # Since issue 23 a finish that settles the task adds it to its hour in the rollup, in the same transaction, by
    # the store's own trigger (revision 0018): no statement more. And on PostgreSQL a plain finish (no failure to
    # settle by policy, no spend to book) is its one UPDATE, committing by itself, and so is a claim of one task when
    # no limited type could be among it (its replay look-up and the limits' check are in the same statement): the
    # two calls cost 1 + 1, and so does the one call (its finish and claim each safe to repeat), which still saves
    # an HTTP request.
    store = store_url.split(":")[0].split("+")[0]
    assert (two, one) <= {"sqlite": (7, 4), "postgresql": (2, 2)}[store]
    assert one < two if store == "sqlite" else one <= two


def test_a_keyed_create_costs_what_an_unkeyed_one_does(store_url: str) -> None:
    """The client always sends a key: its create is one INSERT that skips a stored key (issue 23), and only a
    replay reads the task the key made."""
    counts = _bench().measure(store_url, 20)
    # SQLite: INSERT, COMMIT; PostgreSQL: the INSERT alone, which commits by itself (autocommit: no BEGIN, no COMMIT)
    # and sends the wake-up itself (pg_notify in its RETURNING) instead of a NOTIFY of its own
    assert counts["create"] == {"sqlite": 2, "postgresql": 1}[store_url.split(":")[0].split("+")[0]]
    assert counts["create with a key"] == counts["create"]
    assert counts["create replayed by its key"] == counts["create"] + 1  # the look-up of the task its key made


def test_a_connection_the_server_dropped_costs_a_read_nothing(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="coherence-pg-drop-"))
    server = PostgresServer(root).start()
    engine = create_store_engine(server.new_database())
    try:
        migrate(engine)
        store = TaskStore(engine)
        task = store.create(direction="kept", task_type="run")
        assert store.get(task["id"])["direction"] == "kept"  # the pool now holds a connection
        server.stop()
        server.resume()  # every pooled connection is dead now
        assert store.get(task["id"])["direction"] == "kept"
        assert store.list()[1] == 1
    finally:
        engine.dispose()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
