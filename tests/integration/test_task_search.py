"""Free-text search and sorted pages of tasks on both stores: found by a word of the direction, the output or the
question; kept in step with finishes, retries, deletes and retention; served from the search index (the query
plan says so); hostile text read as words or refused with a 422, never a 500; every sort column both ways; and
the same through GET /api/agent/tasks and the console's /tasks page of one API per store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from coherence_network.clock import utcnow
from coherence_network.contract import SORT_COLUMNS, TaskStatus
from coherence_network.settings import Settings
from coherence_network.store import TaskStore
from coherence_network.store.retention import prune_store
from coherence_network.store.schema import tasks
from coherence_network.store.search import COUNT_CAP, pg_matches, search_condition, search_words
from tests.support.api import ServedApi
from tests.support.postgres import PostgresServer

HOSTILE = ['"', '""', "*", "-", "- -x", "OR", "a OR b", "NEAR(", "NEAR(a b", "a:*", "a & b | !c", "'", "(", ")",
           "^", "{x}", "col:word", "\\", "%_", "<->", "AND NOT", "' OR 1=1 --", "😀 emoji", "x" * 500,
           "ab " * 166, "\u200b", "\t\n"]


def ids(store: TaskStore, **query: Any) -> list[int]:
    return [task["id"] for task in store.list(limit=500, **query)[0]]


def run_to_end(store: TaskStore, status: TaskStatus, output: str | None = None,
               question: str | None = None) -> dict[str, Any]:
    """Claim the next task and end its run as a runner would (the output arrives with the finish)."""
    claim = store.claim("r1")
    assert claim is not None
    return store.finish(claim["id"], claim["claim_token"], status=status.value, output=output,
                        decision_prompt=question)


def index_in_step(store: TaskStore) -> None:
    """The search index holds exactly the stored tasks: SQLite's FTS5 checks itself against the table; on
    PostgreSQL every task has one document and no document outlives its task."""
    with store.transaction() as conn:
        if store.dialect == "sqlite":
            conn.execute(sa.text("INSERT INTO tasks_fts(tasks_fts, rank) VALUES ('integrity-check', 1)"))
            return
        orphans = conn.scalar(sa.text("SELECT count(*) FROM task_search s LEFT JOIN tasks t ON t.id = s.task_id "
                                      "WHERE t.id IS NULL"))
        missing = conn.scalar(sa.text("SELECT count(*) FROM tasks t LEFT JOIN task_search s ON s.task_id = t.id "
                                      "WHERE s.task_id IS NULL"))
        assert (orphans, missing) == (0, 0)


def test_a_word_of_the_direction_output_or_question_finds_its_task(store: TaskStore) -> None:
    parser = store.create(direction="Fix the tokenizer_v2 parser in módulo café", task_type="impl")
    store.create(direction="write the release notes", task_type="spec")
    done = run_to_end(store, TaskStatus.COMPLETED, output="Traceback: KeyError 'zebra42' in loader.py")
    asking = store.create(direction="deploy", task_type="run", priority=1)
    run_to_end(store, TaskStatus.NEEDS_DECISION, question="Rollback the canary deployment?")
    assert done["id"] == parser["id"]

    assert ids(store, search="tokenizer_v2") == [parser["id"]]
    assert ids(store, search="PARSER") == [parser["id"]]  # any case
    assert ids(store, search="café") == ids(store, search="módulo") == [parser["id"]]  # any language, as typed
    assert ids(store, search="zebra42") == ids(store, search="keyerror loader") == [parser["id"]]  # the output
    assert ids(store, search="canary") == [asking["id"]]  # the question
    assert ids(store, search="tokeni") == [parser["id"]]  # the last word as typed so far
    assert ids(store, search="the") == [3, 2, 1]  # every task holding it, newest first
    assert ids(store, search="the release") == [2]  # every word must match
    assert ids(store, search="parser nowhere") == []
    assert ids(store, search="  ") == [] and ids(store, search="?!") == []  # no word, no match
    assert store.list(search="the", limit=1)[1] == 3  # the total counts every match
    assert ids(store, search="the", status=TaskStatus.PENDING) == [2]  # with the filters


def test_the_index_follows_finishes_retries_deletes_and_retention(store: TaskStore, tmp_path: Path) -> None:
    task = store.create(direction="nightly build", task_type="run", command="make")
    assert ids(store, search="segfault") == []
    failed = run_to_end(store, TaskStatus.FAILED, output="core dumped: segfault in libfoo")
    assert ids(store, search="segfault") == [task["id"]]  # the output arrived with the finish
    store.retry(failed["id"])
    run_to_end(store, TaskStatus.COMPLETED, output="all green")
    assert ids(store, search="segfault") == [] and ids(store, search="green") == [task["id"]]  # re-indexed
    index_in_step(store)

    with store.transaction() as conn:
        conn.execute(tasks.delete().where(tasks.c.id == task["id"]))
    assert ids(store, search="green") == []
    index_in_step(store)

    old = [store.create(direction=f"old flaky job {i}", task_type="run")["id"] for i in range(3)]
    for _ in old:
        run_to_end(store, TaskStatus.COMPLETED, output="flaky output")
    store.create(direction="newest stays", task_type="run")
    with store.transaction() as conn:
        conn.execute(tasks.update().where(tasks.c.id.in_(old)).values(finished_at=utcnow() - timedelta(days=40)))
    report = prune_store(store, Settings(coherence_home=tmp_path, coherence_retain_tasks_days=30))
    assert report.tasks == 3
    assert ids(store, search="flaky") == []
    index_in_step(store)


def test_a_search_reads_the_index_not_the_table(store: TaskStore) -> None:
    """The plans of the store's search queries. SQLite: a page asks the FTS5 table's index. PostgreSQL: the matching
    ids come from the GIN index (sequential and plain index scans off: a table of a few rows is read whole
    otherwise, which proves nothing)."""
    store.create(direction="alpha beta", task_type="run")
    if store._pg:
        query = pg_matches(search_words("alpha bet")).limit(COUNT_CAP + 1)
    else:
        query = sa.select(tasks.c.id).where(search_condition(False, "alpha bet")).order_by(tasks.c.id.desc())
    with store.connection() as conn:
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
    with store.transaction() as conn:
        if store._pg:
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            conn.execute(sa.text("SET LOCAL enable_indexscan = off"))
            plan = "\n".join(conn.execute(sa.text(f"EXPLAIN {compiled}")).scalars())
            assert "Bitmap Index Scan on ix_task_search_document" in plan, plan
        else:
            plan = "\n".join(row[-1] for row in conn.execute(sa.text(f"EXPLAIN QUERY PLAN {compiled}")))
            assert "VIRTUAL TABLE INDEX" in plan and "SCAN tasks_fts" in plan, plan
        assert conn.execute(query).scalars().all() == [1]


def test_a_search_counts_its_matches_up_to_the_cap(store: TaskStore) -> None:
    """Past COUNT_CAP matches a search's total reads "more than COUNT_CAP"; pages still come newest first, and a
    filter that leaves few matches counts them exactly."""
    now = utcnow()
    rows = [{"direction": f"common word {i}", "task_type": "run", "status": "pending" if i % 500 else "failed",
             "priority": i % 7, "created_at": now, "updated_at": now} for i in range(COUNT_CAP + 5)]
    with store.transaction() as conn:
        conn.execute(tasks.insert(), rows)
    page, total = store.list(search="common", limit=3)
    assert total == COUNT_CAP + 1 and [t["id"] for t in page] == [COUNT_CAP + 5, COUNT_CAP + 4, COUNT_CAP + 3]
    assert store.list(search="common", sort="id", descending=False, limit=1)[0][0]["id"] == 1
    assert [t["id"] for t in store.list(search="common", offset=COUNT_CAP, limit=3)[0]] == [5, 4, 3]  # past the cap
    assert store.list(search="common", status=TaskStatus.FAILED)[1] == 3  # ids 1, 501, 1001
    assert store.list(search="word 1004")[1] == 1 and store.list()[1] == COUNT_CAP + 5  # exact below the cap
    # a sort of more than COUNT_CAP matches (SQLite walks the sort's index instead of sorting them): the same order
    urgent = sorted(range(1, COUNT_CAP + 6), key=lambda task_id: (-((task_id - 1) % 7), task_id))
    assert ids(store, search="common", sort="priority", descending=True)[:60] == urgent[:60]
    pending = [task_id for task_id in urgent if (task_id - 1) % 500]
    assert ids(store, status=TaskStatus.PENDING, sort="priority", descending=True)[:60] == pending[:60]
    least = sorted(pending, key=lambda task_id: ((task_id - 1) % 7, -task_id))
    assert ids(store, status=TaskStatus.PENDING, search="common", sort="priority", descending=False)[:60] == least[:60]


def test_hostile_text_is_read_as_words(store: TaskStore) -> None:
    store.create(direction='a "quoted" OR NEAR(thing) -minus x*y', task_type="run")
    for text in HOSTILE:
        store.list(search=text)  # no store error, whatever the text
    assert ids(store, search='"quoted"') == ids(store, search="NEAR(thing)") == [1]
    assert ids(store, search="-minus") == ids(store, search="x*y") == [1]
    assert ids(store, search="quoted OR nothing") == []  # OR is a word here, not an operator
    with pytest.raises(ValueError, match="NUL"):
        store.list(search="a\x00b")


def test_every_sort_column_both_ways(store: TaskStore) -> None:
    for i, priority in enumerate([3, 1, 3, 2, 1]):
        store.create(direction=f"task {i}", task_type=("run", "spec", "impl")[i % 3], priority=priority)
    run_to_end(store, TaskStatus.FAILED)  # the most urgent: 1 (priority 3, oldest)
    store.retry(1)
    run_to_end(store, TaskStatus.COMPLETED)  # 1 again: attempts 0, completed
    run_to_end(store, TaskStatus.FAILED)  # 3: failed, one attempt
    rows = store.list(limit=500)[0]
    for column in SORT_COLUMNS:
        for descending in (False, True):
            got = ids(store, sort=column, descending=descending)
            ties = -1 if column == "priority" else 1  # priority's ties go the claim's way, the others' its own
            want = sorted(rows, key=lambda t: (t[column], ties * t["id"]), reverse=descending)
            assert got == [t["id"] for t in want], (column, descending)
    assert ids(store) == ids(store, sort="id", descending=True) == [5, 4, 3, 2, 1]  # the default is unchanged
    assert ids(store, sort="priority", descending=True, search="task") == [1, 3, 4, 2, 5]
    assert ids(store, sort="priority", descending=True, status=TaskStatus.PENDING) == [4, 2, 5]
    with pytest.raises(ValueError, match="sortable: id, priority"):
        store.list(sort="direction")


# --- the JSON API and the console, one API per store -----------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    home = tmp_path_factory.mktemp("search")
    env = {}
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        env["DATABASE_URL"] = server.new_database(migrated=True)
    process = ServedApi(home / "home", env=env).start()
    with httpx.Client(base_url=process.url, timeout=10) as http:
        for i, (direction, priority) in enumerate([("backup the database", 1), ("rotate logs", 5),
                                                   ("backup the wiki", 3)]):
            http.post("/api/agent/tasks", json={"direction": direction, "task_type": "spec", "priority": priority},
                      headers={"Idempotency-Key": f"k{i}"}).raise_for_status()
        yield http
    process.stop()


def test_the_api_searches_and_sorts(api: httpx.Client) -> None:
    def listed(**params: Any) -> list[int]:
        answer = api.get("/api/agent/tasks", params=params)
        assert answer.status_code == 200, answer.text
        return [t["id"] for t in answer.json()["items"]]

    assert listed(q="backup") == [3, 1]
    assert listed(q="backup", sort="id") == [1, 3]
    assert listed(sort="-priority") == [2, 3, 1] and listed(sort="priority") == [1, 3, 2]
    assert listed(q="backup", sort="-priority", limit=1) == [3]
    answer = api.get("/api/agent/tasks", params={"q": "backup"}).json()
    assert (answer["total"], answer["total_exact"]) == (2, True)
    for text in HOSTILE:
        assert api.get("/api/agent/tasks", params={"q": text}).status_code == 200, text
        assert api.get("/tasks", params={"q": text}).status_code == 200, text


@pytest.mark.parametrize(("params", "says"), [
    ({"q": "a\x00b"}, "NUL"),
    ({"q": "x" * 501}, "at most 500 characters"),
    ({"sort": "direction"}, "sort by one of id, priority, status, task_type, created_at, updated_at, attempts"),
    ({"sort": "--id"}, "sort by one of"),
    ({"sort": "-priority", "finished_after": "2026-01-01T00:00:00Z"}, "takes no sort"),
])
def test_the_api_refuses_what_it_cannot_search_or_sort_by(api: httpx.Client, params: dict[str, str],
                                                           says: str) -> None:
    answer = api.get("/api/agent/tasks", params=params)
    assert answer.status_code == 422 and says in answer.text, answer.text


def test_coherence_tasks_searches_and_sorts(api: httpx.Client, tmp_path: Path) -> None:
    env = {**os.environ, "COHERENCE_HOME": str(tmp_path), "AGENT_API_BASE": str(api.base_url).rstrip("/")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "coherence_network.cli", "tasks", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    listed = cli("--search", "backup", "--sort", "-priority")  # a value with a leading - needs no =
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["#3", "#1"] and lines[-1] == "1-2 of 2 tasks"
    refused = cli("--sort=direction")
    assert refused.returncode == 2 and "sort by one of id, priority" in refused.stderr


def test_the_console_searches_sorts_and_keeps_both_in_its_links(api: httpx.Client) -> None:
    page = api.get("/tasks", params={"q": "backup", "status": "pending", "sort": "-priority"})
    assert page.status_code == 200
    html = page.text
    assert "2 matching" in html and 'value="backup"' in html
    assert '<input type="hidden" name="sort" value="-priority">' in html
    assert html.index('href="/tasks/3"') < html.index('href="/tasks/1"') and 'href="/tasks/2"' not in html
    # the active column says so, and its link flips the direction; the others keep the search and the filter
    assert 'aria-sort="descending"><a href="/tasks?status=pending&amp;q=backup&amp;sort=priority">Priority' in html
    assert 'href="/tasks?status=pending&amp;q=backup&amp;sort=-created_at"' in html
    empty = api.get("/tasks", params={"q": "nothing-like-it"}).text
    assert "0 matching" in empty and "No task matches “nothing-like-it”." in empty
    for params in ({"q": "x" * 501}, {"q": "a\x00b"}, {"sort": "direction"}):
        assert api.get("/tasks", params=params).status_code == 400
