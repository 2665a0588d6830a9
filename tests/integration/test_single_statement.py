"""Moves that are one statement commit it by itself on PostgreSQL (StoreCore.single_statement, issue 23): the
connection goes back to the pool as it came, so a transaction after it on the same connection is still one."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from coherence_network.agents import Usage
from coherence_network.store import TaskStore
from coherence_network.store.run_endings import AgentRun
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


def _statements(engine: sa.Engine) -> list[str]:
    """The SQL statements sent on ``engine`` from now on, and "COMMIT" for each commit the driver sends (none on a
    connection in autocommit, where SQLAlchemy still marks where its transaction would end)."""
    sent: list[str] = []

    def committed(conn: sa.Connection) -> None:
        if getattr(conn.connection.dbapi_connection, "autocommit", False) is not True:
            sent.append("COMMIT")

    sa.event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: sent.append(statement))
    sa.event.listen(engine, "commit", committed)
    return sent


def test_a_claim_of_one_task_replays_its_request_and_keeps_to_the_limits(store_engine: sa.Engine) -> None:
    """On PostgreSQL a claim of one task is one statement that commits by itself: it claims a type without a limit,
    hands a retried request what it got, and says when a limited type could be among its own; only then does a
    transaction take the limits' lock, without repeating that statement, and for a while the claims of those types
    go straight to the transaction. SQLite claims as it did."""
    store = TaskStore(store_engine)
    store.set_type_policy("impl", "test", max_running=1)
    run = store.create(task_type="run", direction="free")
    impls = [store.create(task_type="impl", direction=f"limited {i}") for i in range(2)]
    sent = _statements(store_engine)

    got = store.claim("r1", types=["run", "impl"], request_id="a")  # both types: the free one is picked alone
    assert got is not None and got["id"] == run["id"]
    again = store.claim("r1", types=["run", "impl"], request_id="a")  # a retry after a lost answer
    assert again is not None and (again["id"], again["claim_token"]) == (run["id"], got["claim_token"])
    limited = store.claim("r2", types=["impl"], request_id="b")
    assert limited is not None and limited["id"] == impls[0]["id"]
    assert store.claim("r3", types=["impl"], request_id="c") is None  # its limit is reached
    assert store.claim("r1", types=["run"], request_id="d") is None  # nothing left of a type without a limit
    assert store.get(impls[1]["id"])["status"] == "pending"

    if store_engine.dialect.name == "postgresql":
        assert [statement.split()[0] for statement in sent] == [
            "WITH", "WITH",  # a claim and its replay: one statement each, no transaction
            "WITH", "SELECT", "UPDATE", "COMMIT",  # nothing free, then the limits' lock and the claim under the limit
            # the same type again, at its limit: a claim of it just found the limit, so straight to the transaction
            # (the statement for types without a limit first, as in one claim of several), then a retry's look-up
            "UPDATE", "SELECT", "UPDATE", "SELECT", "COMMIT",
            "WITH",  # nothing free and nothing limited among its types
            "SELECT",  # the get
        ], sent


def test_a_finish_with_nothing_to_book_is_one_statement_and_one_with_spend_books_it(store_engine: sa.Engine) -> None:
    """The API hands every finish an AgentRun, empty for a run that reported no usage (a command's): that finish is
    its one UPDATE on PostgreSQL; a run that reported spend books it in the finish's transaction."""
    store = TaskStore(store_engine)
    for i in range(2):
        store.create(task_type="run", direction=f"run {i}")
    first, second = store.claim("r1"), store.claim("r1")
    assert first is not None and second is not None
    sent = _statements(store_engine)
    store.finish(first["id"], first["claim_token"], status="completed", usage=AgentRun(None, None, Usage()))
    plain = len(sent)
    store.finish(second["id"], second["claim_token"], status="completed",
                 usage=AgentRun("claude", "a-model", Usage(10, 20, 0.5)))
    assert [(a["agent"], a["cost_usd"]) for a in store.spend_per_agent()] == [("claude", 0.5)]
    assert store.get(second["id"])["cost_usd"] == 0.5
    if store_engine.dialect.name == "postgresql":
        assert sent[:plain] == [sent[0]] and sent[0].startswith("UPDATE")  # no COMMIT: it committed by itself
        assert sent[plain:].count("COMMIT") == 1 and len(sent) - plain >= 3  # UPDATE, the ledger's row, COMMIT
