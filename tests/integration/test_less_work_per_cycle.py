"""Less work per cycle (issue 14): batch create, claims of several, finish-and-claim-next, the finished_after
cursor and stored run durations, on both stores; then the same shapes over HTTP through the client."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from coherence_network.clock import utcnow
from coherence_network.contract import MAX_BATCH, TaskStatus, TaskType
from coherence_network.store import Conflict, TaskStore
from coherence_network.store.db import alembic_config, create_store_engine, migrate
from coherence_network.store.failures import TypeDefaults
from coherence_network.store.schema import tasks

RUN = TaskType.RUN


@pytest.fixture
def store(store_engine: Engine) -> TaskStore:
    """This module's lease and attempts; an automatic retry is due at once."""
    store = TaskStore(store_engine, lease_seconds=30, max_attempts=2)
    store.type_defaults = TypeDefaults(retry_delay_seconds=0)
    return store


def _item(direction: str, key: str | None = None, **fields: object) -> dict[str, object]:
    return {"direction": direction, "task_type": RUN, "idempotency_key": key, **fields}


def _total(store: TaskStore) -> int:
    return store.count()["total"]


# --- batch create ---------------------------------------------------------------------------------------------
def test_a_batch_is_created_in_order_and_each_keyed_item_replays(store: TaskStore) -> None:
    first = store.create_many([_item("a", "k-a"), _item("b"), _item("c", "k-c", priority=5)])
    assert [(t["direction"], created) for t, created in first] == [("a", True), ("b", True), ("c", True)]
    assert first[2][0]["priority"] == 5 and {t["status"] for t, _ in first} == {TaskStatus.PENDING}

    again = store.create_many([_item("c", "k-c"), _item("d", "k-d"), _item("a", "k-a"), _item("d", "k-d")])
    assert [t["id"] for t, _ in again][::2] == [first[2][0]["id"], first[0][0]["id"]]
    assert [created for _, created in again] == [False, True, False, False]
    assert again[1][0]["id"] == again[3][0]["id"]  # the same key twice in one batch is one task
    assert _total(store) == 4


def test_a_reused_key_for_another_task_writes_nothing_of_the_batch(store: TaskStore) -> None:
    store.create_many([_item("a", "k-a")])
    with pytest.raises(Conflict, match="k-a"):
        store.create_many([_item("new", "k-new"), _item("not a", "k-a")])
    with pytest.raises(Conflict, match="earlier item of this batch"):
        store.create_many([_item("x", "k-x"), _item("y", "k-x")])
    assert _total(store) == 1
    with pytest.raises(ValueError, match="1..1000"):
        store.create_many([])
    with pytest.raises(ValueError, match="1..1000"):
        store.create_many([_item(str(i)) for i in range(MAX_BATCH + 1)])
    assert store.create_many([_item("new", "k-new")])[0][1] is True  # the refused batch left the key unused


# --- claims of several ----------------------------------------------------------------------------------------
def test_claim_many_takes_the_most_urgent_each_with_its_own_token_and_replays(store: TaskStore) -> None:
    made = [t for t, _ in store.create_many([_item(f"p{p}", priority=p) for p in (1, 5, 3, 0)])]
    made.append(store.create(direction="spec", task_type=TaskType.SPEC, priority=9))
    claimed = store.claim_many("r1", 3, types=[RUN], request_id="req-1")
    assert [t["direction"] for t in claimed] == ["p5", "p3", "p1"]
    assert all(t["status"] == TaskStatus.RUNNING and t["claim_token"] == 1 and t["claimed_by"] == "r1"
               for t in claimed)
    assert store.claim_many("r1", 3, types=[RUN], request_id="req-1") == claimed  # a retry gets the same claim
    assert [t["direction"] for t in store.claim_many("r2", 100)] == ["spec", "p0"]
    assert store.claim_many("r2", 100) == []
    with pytest.raises(ValueError):
        store.claim_many("r2", 101)


def test_racing_claims_of_several_take_each_task_once_and_never_more_than_asked(store: TaskStore) -> None:
    store.create_many([_item(f"t{i}") for i in range(600)])
    claims: list[list[dict[str, object]]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def claimer(name: str) -> None:
        try:
            start.wait()
            while claimed := store.claim_many(name, 7, request_id=None):
                claims.append(claimed)  # list.append is atomic
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"r{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    ids = [task["id"] for claimed in claims for task in claimed]
    assert len(ids) == 600 and len(set(ids)) == 600
    assert max(len(claimed) for claimed in claims) == 7


# --- finish and claim the next ------------------------------------------------------------------------------
def test_finish_and_claim_next_in_one_call_is_safe_to_retry(store: TaskStore) -> None:
    first, second = (t for t, _ in store.create_many([_item("one"), _item("two")]))
    claim = store.claim("r1")
    assert claim["id"] == first["id"]
    call = {"status": TaskStatus.COMPLETED, "output": "ok", "exit_code": 0, "runner_id": "r1", "request_id": "n-1"}
    finished, following = store.finish_and_claim(first["id"], claim["claim_token"], **call)
    assert finished["status"] == TaskStatus.COMPLETED and finished["output"] == "ok"
    assert following is not None and following["id"] == second["id"] and following["status"] == TaskStatus.RUNNING
    assert store.finish_and_claim(first["id"], claim["claim_token"], **call) == (finished, following)  # a retry
    done, nothing = store.finish_and_claim(second["id"], following["claim_token"], **{**call, "request_id": "n-2"})
    assert done["status"] == TaskStatus.COMPLETED and nothing is None


def test_a_stale_finish_is_refused_and_claims_nothing(store: TaskStore) -> None:
    task = store.create(direction="slow", task_type=RUN)
    waiting = store.create(direction="next", task_type=RUN, priority=-1)
    zombie = store.claim("r1")
    store.reap(now=utcnow() + timedelta(seconds=60))  # r1's lease expired
    current = store.claim("r2")
    assert current["id"] == task["id"] and current["claim_token"] == zombie["claim_token"] + 1
    with pytest.raises(Conflict, match="stale"):
        store.finish_and_claim(task["id"], zombie["claim_token"], status=TaskStatus.COMPLETED, runner_id="r1")
    assert store.get(waiting["id"])["status"] == TaskStatus.PENDING
    assert store.get(task["id"])["claimed_by"] == "r2"


# --- stored durations ---------------------------------------------------------------------------------------
def test_the_end_of_a_run_stores_its_durations(store: TaskStore) -> None:
    ok, bad, ask, back = (t for t, _ in store.create_many([_item(n) for n in ("ok", "bad", "ask", "back")]))
    runs = {t["id"]: t for t in store.claim_many("r", 4)}
    done = store.finish(ok["id"], runs[ok["id"]]["claim_token"], status=TaskStatus.COMPLETED)
    failed = store.finish(bad["id"], runs[bad["id"]]["claim_token"], status=TaskStatus.FAILED)
    for row in (done, failed):
        assert row["run_seconds"] == pytest.approx((row["finished_at"] - row["started_at"]).total_seconds(), abs=1e-3)
        assert row["queue_seconds"] == pytest.approx((row["started_at"] - row["created_at"]).total_seconds(),
                                                     abs=1e-3)
    asked = store.finish(ask["id"], runs[ask["id"]]["claim_token"], status=TaskStatus.NEEDS_DECISION,
                         decision_prompt="go?")
    released = store.finish(back["id"], runs[back["id"]]["claim_token"], status=TaskStatus.PENDING)
    assert asked["run_seconds"] is None and released["run_seconds"] is None
    retried = store.retry(bad["id"])
    assert retried["run_seconds"] is None and retried["queue_seconds"] is None
    lost = store.create(direction="expiring", task_type=RUN, priority=10)
    for later in (60, 120):  # two claims whose leases expire: attempts spent (max_attempts 2)
        assert store.claim("r")["id"] == lost["id"]
        store.reap(now=utcnow() + timedelta(seconds=later))
    expired = store.get(lost["id"])
    assert expired["status"] == TaskStatus.FAILED and expired["run_seconds"] > 100


# --- the finished_after cursor ------------------------------------------------------------------------------
def test_finished_after_pages_through_completions_in_finish_order(store: TaskStore) -> None:
    store.create_many([_item(f"t{i}") for i in range(7)])
    claimed = store.claim_many("r", 7)
    for task in reversed(claimed):  # finished in the opposite order of their ids
        store.finish(task["id"], task["claim_token"], status=TaskStatus.COMPLETED)
    start = utcnow() - timedelta(hours=1)
    seen, offset = [], 0
    while True:
        page, total = store.list(status=TaskStatus.COMPLETED, finished_after=start, order="oldest", limit=3,
                                 offset=offset)
        assert total == 7
        seen += page
        offset += len(page)
        if len(page) < 3:
            break
    assert [t["id"] for t in seen] == [t["id"] for t in reversed(claimed)]
    after_third, total = store.list(status=TaskStatus.COMPLETED, finished_after=seen[2]["finished_at"],
                                    order="oldest")
    assert [t["id"] for t in after_third] == [t["id"] for t in seen[3:]] and total == 4  # strictly after
    newest, _ = store.list(finished_after=start, order="newest", limit=1)
    assert newest[0]["id"] == seen[-1]["id"]


# --- the migration ------------------------------------------------------------------------------------------
def test_a_store_at_0006_gets_its_durations_backfilled(store_url: str) -> None:
    engine = create_store_engine(store_url)
    command.upgrade(alembic_config(engine), "0006")
    t0 = utcnow().replace(microsecond=0) - timedelta(hours=2)
    base = {"task_type": RUN, "created_at": t0, "updated_at": t0}
    rows = [
        {**base, "direction": "done", "status": TaskStatus.COMPLETED, "started_at": t0 + timedelta(seconds=4),
         "finished_at": t0 + timedelta(seconds=19)},
        {**base, "direction": "never started", "status": TaskStatus.FAILED, "started_at": None,
         "finished_at": t0 + timedelta(seconds=9)},
        {**base, "direction": "running", "status": TaskStatus.RUNNING, "started_at": t0 + timedelta(seconds=1),
         "finished_at": None},
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(tasks), rows)  # only the columns the rows name: those 0006 has
    assert migrate(engine)[0] == "0006"  # through 0007 (and whatever comes after) to head
    with engine.connect() as conn:
        stored = conn.execute(sa.select(tasks.c.direction, tasks.c.run_seconds, tasks.c.queue_seconds)
                              .order_by(tasks.c.id)).all()
    assert [(d, run, queue) for d, run, queue in stored] == [
        ("done", pytest.approx(15.0, abs=1e-3), pytest.approx(4.0, abs=1e-3)),
        ("never started", None, None),
        ("running", None, None),
    ]
    indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("tasks")}
    assert "ix_tasks_finished_durations" in indexes and "ix_tasks_finished_window" not in indexes
    engine.dispose()
