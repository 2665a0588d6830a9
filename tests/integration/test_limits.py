"""Limits per task type (issue 21 item 6) and the type policies' write side, on both stores: the claim never hands
out a type beyond its max_running, not in one claim of several, not under claims racing on many threads; a runner
still gets other types, and a claim waiting on a full type gets the slot the moment it frees."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from coherence_network.client import ApiClient
from coherence_network.contract import SETTLED_STATUSES as SETTLED
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.endpoints import ACTOR_HEADER
from coherence_network.store import TaskStore
from coherence_network.store.schema import audit
from tests.support.api import ApiProcess, ServedApi
from tests.support.net import wait_until
from tests.support.postgres import PostgresServer
from tests.support.runner import RunnerProcess
from tests.support.waiting_claim import WaitingClaim

LIMIT = 2
CLI = [sys.executable, "-m", "coherence_network.cli"]


def _tasks(store: TaskStore, task_type: str, count: int, priority: int = 0) -> list[int]:
    return [store.create(direction=f"{task_type} {n}", task_type=task_type, priority=priority)["id"]
            for n in range(count)]


def _running(store: TaskStore, task_type: str) -> int:
    return store.list(status="running", task_type=task_type, limit=1)[1]


def _audit(engine: sa.Engine) -> list[dict[str, Any]]:
    """The policy records of the audit trail (read here until its read side lands)."""
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            sa.select(audit.c.actor, audit.c.channel, audit.c.target, audit.c.detail)
            .where(audit.c.action == "policy").order_by(audit.c.id))]


def test_a_type_at_its_limit_is_passed_over_and_other_types_still_claimed(store: TaskStore) -> None:
    store.set_type_policy("impl", "cli:ops", max_running=LIMIT)
    impl = _tasks(store, "impl", 4, priority=9)
    spec = _tasks(store, "spec", 2)
    claimed = store.claim_many("r1", 10)  # one claim of several: at most LIMIT impl, however urgent the rest
    assert [t["id"] for t in claimed] == impl[:LIMIT] + spec
    assert store.claim("r2", types=["impl"]) is None
    assert store.claim_many("r2", 5, types=["impl", "spec"]) == []
    # a finish frees a slot: the claim in the same transaction takes it
    _, following = store.finish_and_claim(claimed[0]["id"], claimed[0]["claim_token"], status="completed",
                                          runner_id="r1", types=["impl"])
    assert following is not None and following["id"] == impl[2]
    assert _running(store, "impl") == LIMIT
    # a limit raised frees a slot at once
    store.set_type_policy("impl", "cli:ops", max_running=LIMIT + 1)
    assert store.claim("r3")["id"] == impl[3]
    assert _running(store, "impl") == LIMIT + 1


def test_a_limit_lowered_below_the_running_count_stops_nothing_and_waits(store: TaskStore) -> None:
    _tasks(store, "impl", 5)
    running = store.claim_many("r1", 3)
    store.set_type_policy("impl", "cli:ops", max_running=1)
    assert store.claim("r2") is None
    for task in running[:2]:
        store.finish(task["id"], task["claim_token"], status="completed")
    assert store.claim("r2") is None  # still one running: at the limit
    store.finish(running[2]["id"], running[2]["claim_token"], status="completed")
    assert store.claim("r2") is not None
    assert store.set_type_policy("impl", "cli:ops", max_running=None)[0]["max_running"] is None
    assert store.claim("r2") is not None  # no limit now: the last one goes too
    assert _running(store, "impl") == 2


def _race(threads: int, work: Callable[[int], None]) -> None:
    """Run ``work(n)`` on ``threads`` threads released at the same instant; re-raise the first error."""
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            start.wait(10)
            work(n)
        except BaseException as error:  # noqa: BLE001 - carried to the test's thread
            errors.append(error)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("several", [1, 3], ids=["claim", "claim_many"])
def test_claims_racing_on_many_threads_never_exceed_the_limit(store: TaskStore, several: int) -> None:
    """Eight claims at once, five rounds: each round exactly LIMIT impl are taken (never more), and the spec tasks
    all go (the limit holds its type only)."""
    store.set_type_policy("impl", "cli:ops", max_running=LIMIT)
    for _ in range(5):
        _tasks(store, "impl", 12)
        _tasks(store, "spec", 4)
        got: list[dict[str, Any]] = []
        lock = threading.Lock()

        def claim(n: int) -> None:
            claimed = store.claim_many(f"r{n}", several)
            with lock:
                got.extend(claimed)

        _race(8, claim)
        by_type = [t["task_type"] for t in got]
        assert by_type.count("impl") == LIMIT and _running(store, "impl") == LIMIT, by_type
        assert by_type.count("spec") == min(4, 8 * several - LIMIT), by_type
        for task in got:
            store.finish(task["id"], task["claim_token"], status="completed")
        for task in store.claim_many("drain", 100, types=["spec"]):
            store.finish(task["id"], task["claim_token"], status="completed")


def test_set_type_policy_changes_only_what_it_is_given_and_records_each_change(
    store: TaskStore, store_engine: sa.Engine
) -> None:
    policy, changed = store.set_type_policy("impl", "cli:alice", max_running=2, retry_delay_seconds=30.0)
    assert changed and (policy["max_running"], policy["retry_delay_seconds"], policy["updated_by"]) == (
        2, 30.0, "cli:alice")
    policy, changed = store.set_type_policy("impl", "console:bob", breaker_failures=5)
    assert changed and (policy["max_running"], policy["breaker_failures"]) == (2, 5)
    assert store.set_type_policy("impl", "cli:alice", max_running=2) == (policy, False)  # so already: no change
    policy, changed = store.set_type_policy("impl", "cli:alice", max_running=None)
    assert changed and policy["max_running"] is None and policy["retry_delay_seconds"] == 30.0
    records = _audit(store_engine)
    assert [(r["actor"], r["channel"], r["target"]) for r in records] == [
        ("cli:alice", "cli", "impl"), ("console:bob", "console", "impl"), ("cli:alice", "cli", "impl")]
    assert [r["detail"] for r in records] == [{"max_running": [None, 2], "retry_delay_seconds": [None, 30.0]},
                       {"breaker_failures": [None, 5]}, {"max_running": [2, None]}]
    listed = store.type_policies()
    assert [(p["task_type"], p["max_running"], p["breaker_failures"], p["running"]) for p in listed] == [
        ("impl", None, 5, 0)]
    every = store.type_policies(every_type=["impl", "spec"])
    assert [(p["task_type"], p["breaker_failures"], p["updated_by"]) for p in every] == [
        ("impl", 5, "cli:alice"), ("spec", None, None)]


def test_first_sets_racing_on_one_type_keep_every_field(store: TaskStore, store_engine: sa.Engine) -> None:
    """Four first changes of one type at once (on PostgreSQL all but one lose the insert and update instead): every
    field is kept, and each change is one audit record."""
    values: list[dict[str, Any]] = [{"max_running": 3}, {"retry_delay_seconds": 7.0},
                                    {"retry_max_delay_seconds": 70.0}, {"breaker_failures": 6}]
    _race(4, lambda n: store.set_type_policy("heal", f"cli:op{n}", **values[n]))
    (policy,) = store.type_policies()
    assert {name: policy[name] for one in values for name in one} == {k: v for one in values for k, v in one.items()}
    assert sorted(r["actor"] for r in _audit(store_engine)) == [f"cli:op{n}" for n in range(4)]


@pytest.mark.parametrize(("fields", "message"), [
    ({"max_running": 0}, "at least 1"),
    ({"max_running": 2.5}, "whole number"),
    ({"breaker_failures": -1}, "0 or more"),
    ({"retry_delay_seconds": 0}, "more than 0"),
    ({"retry_delay_seconds": 60, "retry_max_delay_seconds": 10}, "must not be below"),
    ({"max_runnin": 1}, "unknown policy fields"),
])
def test_bad_policy_values_are_refused_and_nothing_is_stored(
    store: TaskStore, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.set_type_policy("impl", "cli:ops", **fields)
    assert store.type_policies() == []


def test_a_claim_waiting_on_a_full_type_gets_the_slot_when_it_frees(tmp_path: Path, migrated_store_url: str) -> None:
    """Rechecks once a minute: a waiting claim that gets the freed slot within seconds was woken by the finish. The
    same runner still gets another type at once: the limit holds its type, not the runner."""
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": migrated_store_url,
                                            "COHERENCE_CLAIM_RECHECK_SECONDS": "60"}).start()
    try:
        client = ApiClient(base_url=api.url, retries=0)
        assert client.set_policy(TaskType.IMPL, by="cli:ops", max_running=1).changed
        first, second = (client.create_task(f"impl {n}", TaskType.IMPL, priority=5) for n in range(2))
        spec = client.create_task("spec", TaskType.SPEC)
        running = client.claim("r1", types=[TaskType.IMPL])
        assert running is not None and running.id == first.id
        other = client.claim("r2", types=[TaskType.IMPL, TaskType.SPEC], wait_seconds=30)
        assert other is not None and other.id == spec.id  # at once, though impl leads and waits
        waiting = WaitingClaim(client, api, "r2", [TaskType.IMPL]).start()
        client.finish(running.id, running.claim_token, TaskStatus.COMPLETED)
        got = waiting.result()
        assert got is not None and got.id == second.id
        assert waiting.waited < 10  # woken by the finish, not by the minute's recheck
        client.close()
    finally:
        api.stop()


@pytest.fixture(scope="module")
def http_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    """One served API on SQLite for the module's HTTP and CLI checks."""
    api = ServedApi(tmp_path_factory.mktemp("limits") / "home").start()
    yield api
    api.stop()


def test_policies_over_http_take_the_actor_from_the_header_and_refuse_bad_values(http_api: ServedApi) -> None:
    url = f"{http_api.url}/api/agent/policies"
    listed = httpx.get(url).json()
    assert [p["task_type"] for p in listed["policies"]] == sorted(t.value for t in TaskType)
    assert listed["defaults"]["max_running"] is None
    put = httpx.put(f"{url}/review", json={"max_running": 3, "retry_delay_seconds": 5},
                    headers={ACTOR_HEADER: "console:carol"})
    assert put.status_code == 200, put.text
    assert put.json()["changed"] and put.json()["policy"]["updated_by"] == "console:carol"
    cleared = httpx.put(f"{url}/review", json={"by": "cli:dave", "clear": ["max_running"]}).json()
    assert cleared["changed"] and cleared["policy"]["max_running"] is None
    assert cleared["policy"]["retry_delay_seconds"] == 5 and cleared["policy"]["updated_by"] == "cli:dave"
    for body in ({}, {"max_running": 0}, {"max_running": -1}, {"retry_delay_seconds": 0},
                 {"breaker_failures": -1}, {"max_running": 2, "clear": ["max_running"]}, {"clear": ["bogus"]},
                 {"max_running": "two"}, {"retry_max_delay_seconds": 1},  # below the stored first delay (5)
                 {"retry_delay_seconds": 9, "retry_max_delay_seconds": 3}, {"other": 1}):
        refused = httpx.put(f"{url}/review", json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert isinstance(refused.json()["detail"], list)
    assert httpx.put(f"{url}/bogus", json={"max_running": 1}).status_code == 422
    review = next(p for p in httpx.get(url).json()["policies"] if p["task_type"] == "review")
    assert (review["max_running"], review["retry_delay_seconds"]) == (None, 5)  # nothing refused was stored


def _coherence(api: ServedApi, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COHERENCE_HOME": str(api.home), "AGENT_API_BASE": api.url, "COHERENCE_HTTP_TIMEOUT": "5",
           "NO_COLOR": "1"}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_coherence_policy_shows_sets_and_clears(http_api: ServedApi) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    done = _coherence(http_api, "policy", "set", "heal", "--max-running", "2", "--breaker-failures", "4")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("heal: changed; now max_running=2,") and "breaker_failures=4" in done.stdout
    again = _coherence(http_api, "policy", "set", "heal", "--max-running", "2")
    assert again.returncode == 0 and "already so, nothing changed" in again.stdout
    shown = _coherence(http_api, "policy")
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()}
    # running, limit, then the retry delay nobody set: the settings' default (0.2 s in the tests), marked as such
    assert lines["heal"].split()[1:5] == ["0", "2", "0.2", "(default)"] and f"by cli:{user}" in lines["heal"]
    assert "no limit (default)" in lines["spec"] and lines["spec"].rstrip().endswith("-")
    cleared = _coherence(http_api, "policy", "set", "heal", "--max-running", "none", "--json")
    assert cleared.returncode == 0 and json.loads(cleared.stdout)["policy"]["max_running"] is None
    as_json = json.loads(_coherence(http_api, "policy", "--json").stdout)
    heal = next(p for p in as_json["policies"] if p["task_type"] == "heal")
    assert (heal["max_running"], heal["breaker_failures"]) == (None, 4)
    for args, hint in ((("--max-running", "two"), "--max-running"), (("--max-running", "0"), "--max-running"),
                       ((), "give at least one"), (("--retry-delay", "-1"), "--retry-delay")):
        refused = _coherence(http_api, "policy", "set", "heal", *args)
        assert refused.returncode == 2 and hint in refused.stderr, (args, refused.stderr)
    assert _coherence(http_api, "policy", "set", "bogus", "--max-running", "1").returncode == 2


# Each run task takes a slot (a file named by its pid) in a shared folder for a moment, and refuses (exit 3) when it
# finds more than the limit there; it logs when it held its slot (one clock for every process) and how many it saw.
_SLOT_TASK = """
import os, sys, time
slots, log, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
mine = os.path.join(slots, str(os.getpid()))
start = time.monotonic_ns()
open(mine, "x").close()
seen = len(os.listdir(slots))
time.sleep(0.25)
os.remove(mine)
end = time.monotonic_ns()
with open(log, "a") as out:
    out.write(f"{start} {end} {seen}\\n")
sys.exit(3 if seen > limit else 0)
"""


def _most_at_once(spans: list[tuple[int, int]]) -> int:
    """The most spans that overlap at any moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_four_runners_on_two_replicas_never_run_more_than_the_limit(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The issue's "done when": a limit of 2 on a type, 4 runners of 2 slots each on 2 API replicas over one
    PostgreSQL; every moment is checked (each task's own look at the slots, and the spans they held them), and the
    limit is reached (the check could fail). The other type's tasks run beside them."""
    commands = {"COHERENCE_COMMAND_TASK_TYPES": "run,review"}
    env = {"DATABASE_URL": postgres_server.new_database(migrated=True), **commands}
    replicas = [ApiProcess(tmp_path / name, env=env).start() for name in ("a", "b")]
    runners = [RunnerProcess(tmp_path / f"runner-{n}", replicas[n % 2].url, "--runner-id", f"r{n}", "--types",
                             "run,review", "--workers", "2", env=commands) for n in range(4)]
    client = ApiClient(replicas[0].url, token="")
    slots, log, script = tmp_path / "slots", tmp_path / "spans.log", tmp_path / "slot_task.py"
    slots.mkdir()
    script.write_text(_SLOT_TASK)
    try:
        client.set_policy(TaskType.RUN, by="test:limits", max_running=LIMIT)
        command = shlex.join([sys.executable, str(script), str(slots), str(log), str(LIMIT)])
        limited = [client.create_task(f"slot {n}", TaskType.RUN, command=command).id for n in range(8)]
        others = [client.create_task(f"review {n}", TaskType.REVIEW, command="true").id for n in range(4)]
        for runner in runners:
            runner.start()
        wait_until(lambda: all(client.get_task(i).status in SETTLED for i in limited + others), 90,
                   "every task settled")
        tasks = [client.get_task(i) for i in limited + others]
        assert all((t.status, t.attempts) == (TaskStatus.COMPLETED, 0) for t in tasks), [
            (t.id, t.status, t.output) for t in tasks if t.status is not TaskStatus.COMPLETED]
        spans = [tuple(int(f) for f in line.split()) for line in log.read_text().splitlines()]
        assert len(spans) == len(limited)
        assert max(seen for _, _, seen in spans) <= LIMIT
        assert _most_at_once([(start, end) for start, end, _ in spans]) == LIMIT  # reached, never passed
        assert len({t.claimed_by for t in tasks}) > 1  # the runners shared the work
    finally:
        for runner in runners:
            runner.stop()
        client.close()
        for replica in replicas:
            replica.stop()
