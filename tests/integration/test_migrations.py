"""An upgrade never loses data: rows written at the first revision are intact at head, on both backends."""

from __future__ import annotations

from alembic import command

from coherence_network.store import TaskStore
from coherence_network.store.db import alembic_config, create_store_engine, current_revision, head_revision, migrate


def test_upgrade_from_the_first_revision_keeps_every_task(store_url: str) -> None:
    engine = create_store_engine(store_url)
    command.upgrade(alembic_config(engine), "0001")
    store = TaskStore(engine)
    ids = [store.create(direction=f"old {i}", task_type="impl", context={"i": i})["id"] for i in range(25)]
    claimed = store.claim("r")
    store.finish(claimed["id"], claimed["claim_token"], status="needs_decision", decision_prompt="keep?")
    migrate(engine)
    assert current_revision(engine) == head_revision(engine)
    items, total = store.list(order="oldest", limit=100)
    assert total == 25 and [t["id"] for t in items] == ids
    assert [t["context"] for t in items] == [{"i": i} for i in range(25)]
    assert store.get(claimed["id"])["decision_prompt"] == "keep?"
    migrate(engine)  # a second upgrade is a no-op
    assert store.count()["total"] == 25
    engine.dispose()
