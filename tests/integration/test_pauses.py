"""Pause, drain, resume (issue 21 item 3) on both stores: a paused scope is handed out by no claim path, running
work finishes, resuming hands it out again, and the pause is stored."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from coherence_network.store import TaskStore


def test_a_paused_type_is_claimed_by_no_path_while_others_are(store: TaskStore) -> None:
    impl = store.create(direction="impl", task_type="impl", priority=5)
    spec = store.create(direction="spec", task_type="spec")
    store.pause("impl", "cli:ops", "provider down")
    assert store.claim("r1", types=["impl"]) is None
    assert [t["id"] for t in store.claim_many("r1", 5)] == [spec["id"]]
    other = store.create(direction="spec 2", task_type="spec")
    _, following = store.finish_and_claim(spec["id"], 1, status="completed", runner_id="r1")
    assert following is not None and following["id"] == other["id"]
    done, following = store.finish_and_claim(other["id"], 1, status="completed", runner_id="r1", types=["impl"])
    assert done["status"] == "completed" and following is None
    assert store.get(impl["id"])["status"] == "pending"
    assert store.resume("impl") is not None
    assert store.claim("r2")["id"] == impl["id"]


def test_pause_all_holds_every_type_and_running_work_drains(store: TaskStore) -> None:
    running = store.create(direction="runs", task_type="run")
    claimed = store.claim("r1")
    assert claimed["id"] == running["id"]
    store.create(direction="waits", task_type="spec")
    pause, created = store.pause("all", "cli:ops", "maintenance")
    assert created and pause["scope"] == "all" and pause["paused_by"] == "cli:ops"
    assert store.claim_many("r2", 3) == []
    assert store.heartbeat(running["id"], claimed["claim_token"])["status"] == "running"
    assert store.finish(running["id"], claimed["claim_token"], status="completed")["status"] == "completed"
    assert store.resume("all")["reason"] == "maintenance"
    assert store.claim("r2")["direction"] == "waits"


def test_pausing_again_keeps_the_first_pause_and_resume_is_idempotent(store: TaskStore) -> None:
    first, created = store.pause("spec", "cli:a", "first")
    again, created_again = store.pause("spec", "cli:b", "second")
    assert created and not created_again
    assert (again["since"], again["paused_by"], again["reason"]) == (first["since"], "cli:a", "first")
    assert [p["scope"] for p in store.pauses()] == ["spec"]
    assert store.resume("spec") is not None and store.resume("spec") is None and store.pauses() == []


def test_an_unknown_scope_is_refused(store: TaskStore) -> None:
    with pytest.raises(ValueError, match="scope must be one of"):
        store.pause("bogus", "cli:a", "why")
    with pytest.raises(ValueError):
        store.resume("bogus")


def test_the_pause_is_stored_for_another_store_on_the_database(store: TaskStore, store_engine: Engine) -> None:
    store.pause("heal", "cli:a", "kept")
    assert [p["reason"] for p in TaskStore(store_engine).pauses()] == ["kept"]


def test_a_resume_wakes_waiting_claims(store: TaskStore) -> None:
    woke: list[bool] = []
    store.on_work = lambda: woke.append(True)
    store.pause("run", "cli:a", "hold")
    assert woke == []
    store.resume("run")
    assert woke == [True]
