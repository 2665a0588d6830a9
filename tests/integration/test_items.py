"""A backlog item's views: its phase tasks read in order from the store (SQLite and PostgreSQL), its usage summed and
its branch, commits, verdict and merge taken from the tasks' evidence, its decision trail from the audit records;
the same item through the API, the client, the CLI (the runbook's drill) and the console's pages."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from coherence_network.agents import Usage
from coherence_network.client import ApiClient, ApiNotFound
from coherence_network.contract import TaskStatus
from coherence_network.item_view import item_page, item_view
from coherence_network.store import TaskStore
from coherence_network.store.run_endings import AgentRun
from tests.runbook.drill import Drill
from tests.runbook.runbook_doc import Runbook
from tests.support.api import ServedApi

SLUG = "add-a-login-page-3f2a9c1b"
SHA = "a" * 40


def _phase(store: TaskStore, phase: str, iteration: int, slug: str = SLUG) -> dict[str, Any]:
    context = {"item": slug, "title": "Add a login page", "phase": phase, "iteration": iteration}
    return store.create(direction=f"{phase} of {slug}", task_type=phase, context=context, actor="cli:alice",
                        max_attempts=1)


def _run(store: TaskStore, task: dict[str, Any], status: str = "completed", **ending: Any) -> None:
    claimed = store.claim("r1", types=[task["task_type"]])
    assert claimed is not None and claimed["id"] == task["id"]
    store.finish(task["id"], claimed["claim_token"], status=status, **ending)


def make_item(store: TaskStore) -> list[int]:
    """spec (asks, is answered, completes with a commit), impl (fails), impl again (a commit), review (pass,
    merged); and a task of another item in between."""
    spec = _phase(store, "spec", 0)
    _run(store, spec, "needs_decision", decision_prompt="Which login provider?")
    store.decide(spec["id"], "GitHub", "cli:alice")
    _run(store, spec, usage=AgentRun("claude", "sonnet", Usage(100, 20, 0.5)),
         evidence={"branch": f"coherence/{SLUG}", "commit": SHA, "diffstat": "1 file changed, 5 insertions(+)",
                   "files": ["docs/spec.md"]})
    _phase(store, "spec", 0, slug="another-item-00000000")
    impl = _phase(store, "impl", 1)
    _run(store, impl, "failed", error_category="no_change", error_summary="no commit",
         usage=AgentRun("claude", None, Usage(50, None, 0.25)))
    again = _phase(store, "impl", 2)
    _run(store, again, evidence={"branch": f"coherence/{SLUG}", "commit": "b" * 40, "diffstat": "2 files changed"})
    review = _phase(store, "review", 2)
    _run(store, review, usage=AgentRun("codex", None, Usage(10, 5, None)),
         evidence={"branch": f"coherence/{SLUG}", "verdict": "pass", "merge": {"into": "main", "commit": "c" * 40}})
    return [spec["id"], impl["id"], again["id"], review["id"]]


def test_an_item_reads_its_tasks_in_order_with_usage_evidence_and_trail(store: TaskStore) -> None:
    ids = make_item(store)
    item = item_view(store, SLUG)
    assert item is not None
    assert [t.id for t in item.tasks] == ids
    assert [(t.phase, t.iteration, t.status) for t in item.tasks] == [
        ("spec", 0, TaskStatus.COMPLETED), ("impl", 1, TaskStatus.FAILED), ("impl", 2, TaskStatus.COMPLETED),
        ("review", 2, TaskStatus.COMPLETED)]
    assert (item.title, item.status, item.branch) == ("Add a login page", TaskStatus.COMPLETED, f"coherence/{SLUG}")
    assert (item.tokens_in, item.tokens_out, item.cost_usd) == (160, 25, 0.75)
    assert [(c.task_id, c.phase, c.commit) for c in item.commits] == [(ids[0], "spec", SHA), (ids[2], "impl", "b" * 40)]
    assert item.commits[0].files == ["docs/spec.md"] and item.commits[0].diffstat == "1 file changed, 5 insertions(+)"
    assert item.merge == {"into": "main", "commit": "c" * 40} and item.tasks[-1].verdict == "pass"
    spec = item.tasks[0]
    assert (spec.decision_prompt, spec.decision, spec.decided_by) == ("Which login provider?", "GitHub", "cli:alice")
    assert spec.agent == "claude" and spec.model == "sonnet"
    assert item.tasks[1].error_category == "no_change"
    assert [(r.task_id, r.action) for r in item.trail][:2] == [(ids[0], "create"), (ids[0], "decide")]
    assert {r.task_id for r in item.trail} == set(ids)
    assert item_view(store, "no-such-item-12345678") is None
    page = item_page(store, limit=1)
    assert page.total == 2 and [(i.slug, i.task_id, i.phase) for i in page.items] == [(SLUG, ids[-1], "review")]
    assert [i.slug for i in item_page(store, limit=5, offset=1).items] == ["another-item-00000000"]


@pytest.fixture
def items_api(served_api: ServedApi) -> ServedApi:
    assert served_api.app is not None
    make_item(served_api.app.state.store)
    return served_api


def test_the_api_client_cli_and_console_show_the_item(items_api: ServedApi) -> None:
    with ApiClient(items_api.url, retries=0) as client:
        item = client.get_item(SLUG)
        first = item.tasks[0].id
        assert [t.phase for t in item.tasks] == ["spec", "impl", "impl", "review"] and item.cost_usd == 0.75
        with pytest.raises(ApiNotFound):
            client.get_item("no-such-item-12345678")
        assert [i.slug for i in client.list_items(limit=10).items] == [SLUG, "another-item-00000000"]
    assert httpx.get(f"{items_api.url}/api/agent/items/bad%20slug").status_code == 422
    assert httpx.get(f"{items_api.url}/api/agent/items", params={"limit": 0}).status_code == 422

    drill = Drill(items_api.home, items_api.port)
    listing, shown, as_json = (c.replace("{slug}", SLUG) for c in Runbook().drill("item-page").commands())
    assert drill.run(listing).stdout.startswith(f"{SLUG}  completed")
    text = drill.run(shown).stdout
    assert f"branch: coherence/{SLUG}" in text and "verdict pass" in text and "merge: into main as " in text
    assert "asked: Which login provider? -> GitHub (by cli:alice)" in text and f"{SHA[:12]} spec" in text
    assert json.loads(drill.run(as_json).stdout)["tokens_in"] == 160
    missing = subprocess.run([sys.executable, "-m", "coherence_network.cli", "item", "nope-00000000"], env=drill.env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no such item: nope-00000000" in missing.stderr

    page = httpx.get(f"{items_api.url}/items/{SLUG}").text
    assert "Add a login page" in page and "<caption>review</caption>" in page and SHA in page
    assert "Which login provider?" in page and "decide" in page
    assert httpx.get(f"{items_api.url}/items/nope-00000000").status_code == 404
    assert SLUG in httpx.get(f"{items_api.url}/items").text
    task_page = httpx.get(f"{items_api.url}/tasks/{first}").text
    assert f'href="/items/{SLUG}"' in task_page
