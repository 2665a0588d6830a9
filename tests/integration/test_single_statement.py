"""Moves that are one statement commit it by itself on PostgreSQL (StoreCore.single_statement, issue 23): the
connection goes back to the pool as it came, so a transaction after it on the same connection is still one."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from coherence_network.store import TaskStore
from coherence_network.store.schema import tasks


def test_a_transaction_after_a_single_statement_is_still_all_or_nothing(store_engine: sa.Engine) -> None:
    store = TaskStore(store_engine)
    made = store.create(task_type="impl", direction="made by one statement")  # the pool's one connection, reused
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute(tasks.update().where(tasks.c.id == made["id"]).values(priority=7))
        raise RuntimeError("the move fails after its first statement")
    assert store.get(made["id"])["priority"] == 0  # rolled back: the connection was not left in autocommit
    assert store.create(task_type="impl", direction="again")["id"] == made["id"] + 1


def test_a_single_statement_acts_on_what_it_marked(store_engine: sa.Engine) -> None:
    """The create's wake-up reaches waiting claims (on_work) once its statement has committed."""
    store = TaskStore(store_engine)
    woken: list[int] = []
    store.on_work = lambda: woken.append(len(store.list(status="pending")[0]))
    store.create(task_type="impl", direction="wakes")
    assert woken == [1]  # called after the commit: the task is visible to the waiter it wakes
