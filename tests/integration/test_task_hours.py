"""The hourly rollup (store/rollup.py, revision 0016) on both stores: it agrees with the settled tasks after every
kind of move (finish, cancel, the reaper's expiries, a retry), after an upgrade from 0015 with tasks stored, and
after retention; percentile estimates stay within their bucket; pipeline-status's pending-by-type reads its index."""

from __future__ import annotations

import bisect
import random
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.operations import Operations

from coherence_network.clock import utcnow
from coherence_network.contract import TaskStatus
from coherence_network.settings import Settings
from coherence_network.store import TaskStore
from coherence_network.store.db import alembic_config, create_store_engine, migrate
from coherence_network.store.errors import Conflict
from coherence_network.store.retention import prune_store
from coherence_network.store.rollup import DURATION_BOUNDS, ROLLUP_KEEP, estimate, hour_of
from coherence_network.store.schema import HOUR_OUTCOMES, task_hours, tasks
from coherence_network.store.stats import PENDING_BY_TYPE

Rollup = dict[tuple[int, str], dict[str, int]]


def _rollup(conn: sa.Connection) -> Rollup:
    """task_hours as {(hour, type): non-zero counts}, its shards summed, rows of nothing left out (read as the table
    stands: with or without revision 0018's shard column)."""
    found: Rollup = {}
    for row in conn.execute(sa.text("SELECT * FROM task_hours")):
        counts = found.setdefault((row.hour, row.task_type), {})
        for name, n in row._mapping.items():
            if name not in ("hour", "task_type", "shard"):
                counts[name] = counts.get(name, 0) + n
    return {key: nonzero for key, counts in found.items() if (nonzero := {k: n for k, n in counts.items() if n})}


def _recounted(engine: sa.Engine) -> Rollup:
    """The rollup counted afresh from the tasks as they are now, in Python: the oracle for the triggers' SQL."""
    recounted: Rollup = {}
    with engine.connect() as conn:
        settled = conn.execute(sa.select(tasks.c.task_type, tasks.c.status, tasks.c.finished_at, tasks.c.run_seconds,
                                         tasks.c.queue_seconds).where(tasks.c.status.in_(HOUR_OUTCOMES),
                                                                      tasks.c.finished_at.is_not(None)))
        for task in settled:
            counts = recounted.setdefault((hour_of(task.finished_at), task.task_type), {})
            counted = [task.status] + [f"{name}_{bisect.bisect_right(DURATION_BOUNDS, seconds):02d}"
                                       for name, seconds in (("run", task.run_seconds), ("queue", task.queue_seconds))
                                       if seconds is not None]
            for column in counted:
                counts[column] = counts.get(column, 0) + 1
    return recounted


def _agrees(store: TaskStore, engine: sa.Engine) -> Rollup:
    with engine.connect() as conn:
        kept = _rollup(conn)
    assert kept == _recounted(engine)
    return kept


def _total(kept: Rollup, outcome: str) -> int:
    return sum(counts.get(outcome, 0) for counts in kept.values())


def _claimed(store: TaskStore, task_type: str = "impl", **fields: Any) -> dict[str, Any]:
    created = store.create(direction="d", task_type=task_type, **fields)
    task = store.claim("r1", types=[task_type])
    assert task is not None and task["id"] == created["id"]
    return task


def test_every_move_keeps_the_rollup_equal_to_the_settled_tasks(store: TaskStore, store_engine: sa.Engine) -> None:
    done = _claimed(store)
    store.finish(done["id"], done["claim_token"], status="completed")
    broke = _claimed(store, "test")
    store.finish(broke["id"], broke["claim_token"], status="failed", error_summary="no category: not retried")
    kept = _agrees(store, store_engine)
    assert _total(kept, "completed") == 1 and _total(kept, "failed") == 1

    waiting = store.create(direction="d", task_type="spec")
    store.cancel(waiting["id"], "cli:alice", "not needed")  # pending: cancelled at once, no durations
    asked = _claimed(store, "review")
    store.cancel(asked["id"], "cli:alice", "stop it")  # running: requested; its runner then goes silent
    spent = _claimed(store, "run", max_attempts=1)  # its lease expires with its attempts spent: failed
    store.reap(utcnow() + timedelta(hours=2))
    assert store.get(asked["id"])["status"] == TaskStatus.CANCELLED and store.get(spent["id"])["status"] == "failed"
    kept = _agrees(store, store_engine)
    assert _total(kept, "cancelled") == 2 and _total(kept, "failed") == 2

    store.retry(broke["id"])  # back to pending: out of the rollup
    store.retry(waiting["id"])
    kept = _agrees(store, store_engine)
    assert _total(kept, "failed") == 1 and _total(kept, "cancelled") == 1
    again = store.claim("r1", types=["test"])
    assert again is not None
    store.finish(again["id"], again["claim_token"], status="completed")
    _agrees(store, store_engine)
    metrics = store.task_metrics()["windows"]["24h"]["by_type"]
    assert metrics["all"]["completed"] == 2 and metrics["all"]["failed"] == 0  # the reaped failure is 2 h ahead
    assert metrics["test"]["completed"] == 1 and "failed" in metrics["test"]


def test_a_refused_retry_leaves_the_rollup_as_it_was(store: TaskStore, store_engine: sa.Engine) -> None:
    done = _claimed(store)
    store.finish(done["id"], done["claim_token"], status="completed")
    with pytest.raises(Conflict):
        store.retry(done["id"])  # completed is not retried
    assert _total(_agrees(store, store_engine), "completed") == 1


def _history(n: int) -> list[dict[str, Any]]:
    """Settled tasks over the last 40 days (and some pending), durations from 0 to a week."""
    rng, now = random.Random(5), utcnow()
    rows = []
    for _ in range(n):
        finished = now - timedelta(seconds=rng.uniform(0, 40 * 86400))
        run, wait = rng.choice([0.0, 0.05, 0.1, 3.0, 7 * 86400.0, rng.lognormvariate(3, 2)]), rng.lognormvariate(0, 3)
        status = rng.choice(["completed", "completed", "failed", "cancelled", "pending"])
        started = finished - timedelta(seconds=run)
        rows.append({"direction": "d", "task_type": rng.choice(["impl", "test", "spec"]), "status": status,
                     "created_at": started - timedelta(seconds=wait), "started_at": started, "updated_at": now,
                     "finished_at": None if status == "pending" else finished,
                     "run_seconds": None if status == "pending" else run,
                     "queue_seconds": None if status == "pending" else wait})
    return rows


def test_an_upgrade_from_0015_counts_the_settled_tasks_already_stored(store_url: str) -> None:
    engine = create_store_engine(store_url)
    command.upgrade(alembic_config(engine), "0015")
    with engine.begin() as conn:
        conn.execute(tasks.insert(), _history(600))
    migrate(engine)
    with engine.connect() as conn:
        backfilled = _rollup(conn)
    assert backfilled == _recounted(engine)  # the revision's SQL and the moves' upsert count alike
    now = utcnow()
    week = TaskStore(engine).task_metrics(now)["windows"]["7d"]
    since = week["since"]  # the first whole hour of the window
    assert timedelta(days=7) - timedelta(hours=1) < now - since <= timedelta(days=7)
    in_window = sa.and_(tasks.c.finished_at >= since, tasks.c.finished_at <= now)
    with engine.connect() as conn:
        settled = dict(conn.execute(sa.select(tasks.c.status, sa.func.count()).where(in_window)
                                    .group_by(tasks.c.status)).all())
        timed = conn.execute(sa.select(sa.func.count(tasks.c.run_seconds)).where(in_window)).scalar_one()
    found = week["by_type"]["all"]
    assert {s: found[s] for s in ("completed", "failed", "cancelled")} == {
        s: settled.get(s, 0) for s in ("completed", "failed", "cancelled")}
    assert found["run_seconds"]["n"] == timed
    engine.dispose()


def test_a_downgrade_from_0018_merges_the_shards_and_an_upgrade_keeps_them(store_url: str) -> None:
    """Concurrent finishes on PostgreSQL count one hour in several shards: 0017's one row per hour holds their sum,
    and upgrading again carries it over (the triggers count on from there)."""
    engine = create_store_engine(store_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(tasks.insert(), _history(300))
        conn.execute(task_hours.insert(), [{"hour": 7, "task_type": "impl", "shard": shard, "completed": shard,
                                            "run_03": 1} for shard in (1, 2, 5)])
    with engine.connect() as conn:
        before = _rollup(conn)
    assert before[(7, "impl")] == {"completed": 8, "run_03": 3}
    command.downgrade(alembic_config(engine), "0017")
    with engine.connect() as conn:
        merged = conn.execute(sa.text("SELECT hour, task_type, completed, run_03 FROM task_hours WHERE hour = 7")).all()
    assert [tuple(row) for row in merged] == [(7, "impl", 8, 3)]
    migrate(engine)
    with engine.connect() as conn:
        assert _rollup(conn) == before
    engine.dispose()


def test_an_upgrade_to_0018_stopped_partway_goes_through_the_next_time(store_url: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The process stops after 0018 copied the rollup and before it renamed the copy (SQLite keeps the copy: its DDL
    runs outside a transaction): the next migrate upgrades, with the counts the rollup held."""
    engine = create_store_engine(store_url)
    command.upgrade(alembic_config(engine), "0015")
    with engine.begin() as conn:
        conn.execute(tasks.insert(), _history(200))
    command.upgrade(alembic_config(engine), "0017")  # 0016 fills the rollup from the stored tasks
    with engine.connect() as conn:
        counted = _rollup(conn)
    assert counted

    def stopped(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt("stopped between the copy and the rename")

    with monkeypatch.context() as patched:
        patched.setattr(Operations, "rename_table", stopped)
        with pytest.raises(KeyboardInterrupt):
            migrate(engine)
    assert migrate(engine) == ("0017", "0019")
    with engine.connect() as conn:
        assert _rollup(conn) == counted
    engine.dispose()


def test_postgresql_finishes_of_one_type_at_once_do_not_queue_for_one_rollup_row(postgres_server: Any) -> None:
    """Two transactions settling tasks of one type in one hour, on connections in different shards: the second
    settles while the first is still open (one row per hour and type would hold it until the first commits)."""
    engine = create_store_engine(postgres_server.new_database(migrated=True))
    store = TaskStore(engine)
    made = [store.create(task_type="impl", direction=f"d{i}") for i in range(2)]
    claimed = [store.claim("r1") for _ in made]
    settle = sa.text("UPDATE tasks SET status = 'completed', finished_at = now(), run_seconds = 1 WHERE id = :id")
    with engine.connect() as first:
        first.begin()
        shard_of = sa.text("SELECT mod(pg_backend_pid(), 8)")
        shard = first.execute(shard_of).scalar()
        first.execute(settle, {"id": claimed[0]["id"]})
        others = [engine.connect() for _ in range(9)]  # pids in a row: one of them is in another shard
        second = next(conn for conn in others if conn.execute(shard_of).scalar() != shard)
        second.exec_driver_sql("SET lock_timeout = '2s'")
        second.execute(settle, {"id": claimed[1]["id"]})  # would raise LockNotAvailable after 2 s if it queued
        second.commit()
        first.commit()
        for conn in others:
            conn.close()
    with engine.connect() as conn:
        assert _rollup(conn) == _recounted(engine)
        assert conn.execute(sa.select(sa.func.count()).select_from(task_hours)).scalar_one() == 2
    engine.dispose()


def test_estimates_stay_within_their_bucket() -> None:
    rng = random.Random(3)
    for _ in range(200):
        values = sorted(rng.lognormvariate(rng.uniform(-2, 8), rng.uniform(0.1, 3)) for _ in range(rng.randint(1, 300)))
        counts = [0] * (len(DURATION_BOUNDS) + 1)
        for value in values:
            counts[sum(1 for bound in DURATION_BOUNDS if value >= bound)] += 1
        for p in (0.5, 0.95):
            position = p * (len(values) - 1)
            low, high = values[int(position)], values[min(int(position) + 1, len(values) - 1)]
            exact = low + (high - low) * (position - int(position))
            found = estimate(counts, p)
            if DURATION_BOUNDS[0] <= low and high < DURATION_BOUNDS[-1]:
                assert exact / 2 ** 0.5 <= found <= exact * 2 ** 0.5
            else:
                assert found <= max(exact * 2 ** 0.5, DURATION_BOUNDS[0])


def test_retention_prunes_the_hours_no_window_reads(store: TaskStore, store_engine: sa.Engine,
                                                    tmp_path: Any) -> None:
    now = utcnow()
    with store_engine.begin() as conn:
        edge = hour_of(now - ROLLUP_KEEP)
        conn.execute(task_hours.insert(), [{"hour": edge - 1, "task_type": "impl", "completed": 1},
                                           {"hour": edge + 1, "task_type": "impl", "completed": 1}])
    prune_store(store, Settings(coherence_home=tmp_path), now=now, dry_run=True)
    with store_engine.connect() as conn:
        assert len(_rollup(conn)) == 2  # a dry run deletes nothing
    prune_store(store, Settings(coherence_home=tmp_path), now=now)
    with store_engine.connect() as conn:
        assert list(_rollup(conn)) == [(edge + 1, "impl")]


def test_retention_folds_the_shards_of_past_hours(postgres_server: Any, tmp_path: Any) -> None:
    """PostgreSQL (SQLite writes one shard): an hour written in several shards by concurrent finishes is one row again
    once a retention pass comes after the hour following it, with the same sums; the current and the last hour keep
    their shards (a finish begun then may still count in them)."""
    engine = create_store_engine(postgres_server.new_database(migrated=True))
    now = utcnow()
    current = hour_of(now)
    with engine.begin() as conn:
        conn.execute(task_hours.insert(), [{"hour": hour, "task_type": "impl", "shard": shard, "completed": shard,
                                            "run_05": 1}
                                           for hour in (current - 5, current - 1, current) for shard in (0, 2, 6)])
        conn.execute(task_hours.insert(), {"hour": current - 5, "task_type": "test", "shard": 3, "failed": 2})
        before = _rollup(conn)
    prune_store(TaskStore(engine), Settings(coherence_home=tmp_path), now=now)
    with engine.connect() as conn:
        assert _rollup(conn) == before
        rows = conn.execute(sa.select(task_hours.c.hour, task_hours.c.task_type, task_hours.c.shard)).all()
    assert sorted(rows) == sorted([(current - 5, "impl", 0), (current - 5, "test", 0),
                                   *((hour, "impl", shard) for hour in (current - 1, current) for shard in (0, 2, 6))])
    assert before[(current - 5, "impl")] == {"completed": 8, "run_05": 3}
    engine.dispose()


def test_pending_by_type_reads_its_index_alone(store_engine: sa.Engine) -> None:
    postgres = store_engine.dialect.name == "postgresql"
    with store_engine.connect() as conn:
        if postgres:  # an empty table would be scanned whatever its indexes: plan as for a big one
            conn.exec_driver_sql("SET enable_seqscan = off")
        sql = str(PENDING_BY_TYPE.compile(dialect=store_engine.dialect, compile_kwargs={"literal_binds": True}))
        plan = " ".join(str(row) for row in conn.exec_driver_sql(("EXPLAIN " if postgres else "EXPLAIN QUERY PLAN ")
                                                                   + sql))
    assert "ix_tasks_status_type_created" in plan
    assert ("Index Only Scan" in plan) if postgres else ("COVERING INDEX" in plan)
