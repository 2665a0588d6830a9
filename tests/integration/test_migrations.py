"""An upgrade never loses data: rows written at the first revision are intact at head, on both backends."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier as BarrierType
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from coherence_network.contract import TaskStatus, TaskType
from coherence_network.store import TaskStore, schema
from coherence_network.store.db import alembic_config, create_store_engine, current_revision, head_revision, migrate


def test_upgrade_from_the_first_revision_keeps_every_task(store_url: str) -> None:
    """Rows are written with the first revision's columns only: today's TaskStore needs today's schema."""
    engine = create_store_engine(store_url)
    command.upgrade(alembic_config(engine), "0001")
    now = datetime.now(UTC)
    rows = [
        {"direction": f"old {i}", "task_type": TaskType.IMPL, "status": TaskStatus.PENDING, "context": {"i": i},
         "decision_prompt": None, "created_at": now, "updated_at": now}
        for i in range(25)
    ]
    rows[3].update(status=TaskStatus.NEEDS_DECISION, decision_prompt="keep?")
    with engine.begin() as conn:
        ids = [conn.execute(sa.insert(schema.tasks).returning(schema.tasks.c.id), row).scalar_one() for row in rows]
    migrate(engine)
    assert current_revision(engine) == head_revision(engine)
    store = TaskStore(engine)
    items, total = store.list(order="oldest", limit=100)
    assert total == 25 and [t["id"] for t in items] == ids
    assert [t["context"] for t in items] == [{"i": i} for i in range(25)]
    assert store.get(ids[3])["decision_prompt"] == "keep?"
    assert store.get(ids[3])["status"] == TaskStatus.NEEDS_DECISION
    migrate(engine)  # a second upgrade is a no-op
    assert store.count()["total"] == 25
    engine.dispose()


def test_upgrade_to_monitor_issues_by_host_keeps_one_open_row_per_host_and_rule(store_url: str) -> None:
    """A store at 0009 may hold two open rows of one (host, rule) (two replicas raced: nothing prevented it): 0010
    resolves all but the newest, at the time each was last seen, and keeps every other row as it was."""
    engine = create_store_engine(store_url)
    command.upgrade(alembic_config(engine), "0009")
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def row(host: str, rule: str, seen_minutes: int, resolved: bool = False) -> dict[str, object]:
        seen = at + timedelta(minutes=seen_minutes)
        return {"rule": rule, "host": host, "severity": "high", "message": f"{host} {rule} {seen_minutes}",
                "action": "", "runbook": "", "first_seen": at, "last_seen": seen, "resolved_at": seen if resolved
                else None}

    rows = [row("a", "disk_full", 1), row("a", "disk_full", 2), row("b", "disk_full", 3), row("a", "log_errors", 4),
            row("a", "disk_full", 5, resolved=True)]
    with engine.begin() as conn:
        ids = [conn.execute(sa.insert(schema.monitor_issues).returning(schema.monitor_issues.c.id), r).scalar_one()
               for r in rows]
    migrate(engine)
    store = TaskStore(engine)
    try:
        open_rows = store.list_monitor_issues()["issues"]
        assert [i["id"] for i in open_rows] == ids[1:4]  # the newest a/disk_full, b/disk_full, a/log_errors
        with engine.connect() as conn:
            first = conn.execute(sa.select(schema.monitor_issues).where(schema.monitor_issues.c.id == ids[0])).one()
        assert first.resolved_at == first.last_seen == at + timedelta(minutes=1)
        assert store.replace_monitor_issues([], "b") == {"open": 0, "resolved": 1}  # only b's own
        assert [i["id"] for i in store.list_monitor_issues()["issues"]] == [ids[1], ids[3]]
    finally:
        engine.dispose()


def test_upgrade_to_pauses_starts_with_nothing_paused_and_pending_work_claimable(store_url: str) -> None:
    """0011 adds the pauses table empty: a store's pending tasks stay claimable after the upgrade, and a pause
    then holds them."""
    engine = create_store_engine(store_url)
    command.upgrade(alembic_config(engine), "0010")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.tasks), [
            {"direction": f"old {i}", "task_type": TaskType.SPEC, "status": TaskStatus.PENDING, "created_at": now,
             "updated_at": now} for i in range(2)
        ])
    migrate(engine)
    store = TaskStore(engine)
    try:
        assert store.pauses() == [] and store.claim("r1") is not None
        store.pause("spec", "cli:ops", "after the upgrade")
        assert store.claim("r1") is None and store.count()["total"] == 2
    finally:
        engine.dispose()


def _migrate_when_all_are_ready(barrier: BarrierType, url: str) -> None:
    """One API worker's start-up: open the store, wait for the others, migrate."""
    engine = create_store_engine(url)
    barrier.wait(timeout=120)
    migrate(engine)


def test_workers_migrating_one_fresh_sqlite_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Two or more API workers starting on a fresh store must not race ("table tasks already exists")."""
    url = f"sqlite:///{tmp_path / 'coherence.db'}"
    workers = 6
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(workers)
    processes = [spawn.Process(target=_migrate_when_all_are_ready, args=(barrier, url)) for _ in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
    assert [p.exitcode for p in processes] == [0] * workers, "a worker failed to migrate (its traceback is above)"
    engine = create_store_engine(url)
    assert current_revision(engine) == head_revision(engine)
    assert migrate(engine) == (head_revision(engine), head_revision(engine))
    engine.dispose()
