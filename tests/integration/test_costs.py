"""Costs and caps on both stores (issue 22 item 4): a finish's usage lands in the task and the spend ledger, the
sums read it back, and the day cap stops the claims of agent tasks (never of run tasks) until it is raised, which
wakes waiting claims and is recorded in the audit trail."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from coherence_network.agents import Usage
from coherence_network.store import TaskStore
from coherence_network.store.costs import CapDefaults
from coherence_network.store.run_endings import AgentRun


def _agent_run(cost: float, tokens: int = 100) -> AgentRun:
    return AgentRun("custom", "m1", Usage(tokens, tokens // 2, cost))


def _run_one(store: TaskStore, cost: float, *, item: str | None = None, status: str = "completed") -> dict:
    task = store.create(direction="work", task_type="impl", context={"item": item} if item else None)
    claimed = store.claim("r1")
    assert claimed is not None and claimed["id"] == task["id"]
    return store.finish(task["id"], claimed["claim_token"], status=status, usage=_agent_run(cost))


def test_a_finish_records_usage_on_the_task_and_in_the_sums(store: TaskStore) -> None:
    done = _run_one(store, 0.25, item="add-login")
    assert (done["agent"], done["model"], done["tokens_in"], done["tokens_out"], done["cost_usd"]) == (
        "custom", "m1", 100, 50, 0.25)
    _run_one(store, 0.5, item="add-login")
    _run_one(store, 0.125)
    today = store.spend_today()
    assert (today["cost_usd"], today["runs"], today["tokens_in"], today["tokens_out"]) == (0.875, 3, 300, 150)
    assert today["cap_usd"] == 0 and not today["reached"]
    read = store.spend(item="add-login", days=3)
    assert [(a["agent"], a["runs"]) for a in read["agents"]] == [("custom", 3)]
    assert read["item"]["cost_usd"] == 0.75 and read["item"]["runs"] == 2
    assert [d["cost_usd"] for d in read["days"]] == [0.875, 0.0, 0.0]
    assert store.spend(item="another", days=1)["item"]["runs"] == 0


def test_a_retried_tasks_earlier_runs_still_count(store: TaskStore) -> None:
    task = store.create(direction="flaky", task_type="impl", max_attempts=3)
    first = store.claim("r1")
    store.finish(task["id"], first["claim_token"], status="failed", error_category="agent_error",
                 usage=_agent_run(0.25))
    store.retry(task["id"], actor="cli:ops")
    second = store.claim("r1")
    store.finish(task["id"], second["claim_token"], status="completed", usage=_agent_run(0.5))
    assert store.spend_today()["cost_usd"] == 0.75 and store.get(task["id"])["cost_usd"] == 0.5


def test_the_day_cap_holds_agent_tasks_while_run_tasks_go_on(store: TaskStore) -> None:
    woke: list[bool] = []
    store.on_work = lambda: woke.append(True)
    store.cap_defaults = CapDefaults(day=0.5)
    _run_one(store, 0.3)
    assert not store.spend_today()["reached"]
    _run_one(store, 0.3)  # claimed below the cap; its finish passes it
    assert store.spend_today()["reached"]
    agent = store.create(direction="agent work", task_type="impl", priority=9)
    run = store.create(direction="a command", task_type="run", command="true")
    assert [t["id"] for t in store.claim_many("r1", 5)] == [run["id"]]
    assert store.claim("r1") is None
    assert store.get(agent["id"])["status"] == "pending"

    caps, changed = store.set_caps("cli:alice", {"day": 2.0})
    assert changed and caps["day"]["usd"] == 2.0 and caps["day"]["set_by"] == "cli:alice" and woke
    assert store.claim("r1")["id"] == agent["id"]
    _, again = store.set_caps("cli:alice", {"day": 2.0})
    assert not again
    records = [r for r in store.audit_page(limit=10, action="cap")[0]]
    assert [(r["actor"], r["target"], r["status_before"], r["status_after"]) for r in records] == [
        ("cli:alice", "day", "0.5", "2")]
    assert records[0]["detail"] == {"before_usd": 0.5, "after_usd": 2.0}


def test_what_a_running_run_reported_counts_toward_the_day_cap_until_its_finish_records_it(store: TaskStore) -> None:
    store.set_caps("cli:ops", {"day": 1.0})
    running = store.create(direction="long agent run", task_type="impl")
    claimed = store.claim("r1")
    waiting = store.create(direction="next agent run", task_type="impl")
    store.heartbeat(running["id"], claimed["claim_token"], cost_usd=1.25)
    today = store.spend_today()
    assert (today["cost_usd"], today["running_usd"], today["reached"]) == (0.0, 1.25, True)
    assert store.claim("r2") is None
    store.finish(running["id"], claimed["claim_token"], status="completed", usage=_agent_run(1.5))
    today = store.spend_today()
    assert (today["cost_usd"], today["running_usd"], today["runs"]) == (1.5, 0.0, 1)  # counted once
    store.set_caps("cli:ops", {"day": 2.0})
    assert store.claim("r2")["id"] == waiting["id"]


def test_a_cap_set_through_one_replica_holds_the_claims_of_another(store: TaskStore, store_engine: Engine) -> None:
    other = TaskStore(store_engine)  # another API replica on the same database, with no default cap of its own
    _run_one(store, 0.75)
    store.create(direction="agent work", task_type="spec")
    store.set_caps("cli:ops", {"day": 0.5})
    assert other.claim("r1") is None and other.spend_today()["reached"]
    assert other.caps()["day"]["usd"] == 0.5


def test_bad_caps_are_refused(store: TaskStore) -> None:
    with pytest.raises(ValueError, match="unknown cap"):
        store.set_caps("cli:a", {"week": 1.0})
    with pytest.raises(ValueError, match="0 \\(none\\)"):
        store.set_caps("cli:a", {"day": -1.0})
    with pytest.raises(ValueError, match="days must be"):
        store.spend(days=0)
