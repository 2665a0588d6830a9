"""Less work per cycle over HTTP (issue 14): the shapes other components rely on, through the API over HTTP on
both stores and the shared client; and the auto-commit watcher's cursor, which must miss no completion."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from coherence_network import gitops
from coherence_network.client import ApiClient, ApiConflict
from coherence_network.clock import utcnow
from coherence_network.contract import TaskStatus, TaskType
from tests.integration.test_gitops import repo, settings_for  # noqa: F401 - repo is a fixture
from tests.support.api import ServedApi


@pytest.fixture
def api(migrated_store_url: str, tmp_path: Path) -> Iterator[ServedApi]:
    process = ServedApi(tmp_path / "home", env={"DATABASE_URL": migrated_store_url}).start()
    yield process
    process.stop()


def _item(direction: str, key: str | None = None, task_type: str = TaskType.RUN) -> dict[str, object]:
    return {"direction": direction, "task_type": task_type, **({"idempotency_key": key} if key else {})}


def _total(api: ServedApi) -> int:
    return httpx.get(f"{api.url}/api/agent/tasks/count").json()["total"]


def test_batch_create_answers_in_order_replays_and_writes_nothing_when_refused(api: ServedApi) -> None:
    url = f"{api.url}/api/agent/tasks/batch"
    first = httpx.post(url, json={"tasks": [_item("a", "k-a"), _item("b")]})
    assert first.status_code == 201
    assert [t["direction"] for t in first.json()["tasks"]] == ["a", "b"]
    again = httpx.post(url, json={"tasks": [_item("a", "k-a")]})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["tasks"][0]["id"] == first.json()["tasks"][0]["id"]

    conflict = httpx.post(url, json={"tasks": [_item("new", "k-new"), _item("not a", "k-a")]})
    assert conflict.status_code == 409 and "k-a" in conflict.json()["detail"]
    bad_item = httpx.post(url, json={"tasks": [_item("fine"), {"direction": "x", "task_type": "deploy"}]})
    assert bad_item.status_code == 422 and bad_item.json()["detail"][0]["loc"][:3] == ["body", "tasks", 1]
    assert httpx.post(url, json={"tasks": []}).status_code == 422
    assert httpx.post(url, json={"tasks": [_item(str(i)) for i in range(1001)]}).status_code == 422
    assert _total(api) == 2

    with ApiClient(api.url, token="", retries=0) as client:
        made = client.create_tasks([_item("c"), _item("d", "k-d")])
        assert [t.direction for t in made] == ["c", "d"] and made[1].idempotency_key == "k-d"
        assert made[0].idempotency_key  # the client keys every item, so a retried batch makes nothing twice


def test_claims_of_several_and_finish_with_claim_next(api: ServedApi) -> None:
    claims = f"{api.url}/api/agent/tasks/claims"
    assert httpx.post(claims, json={"runner_id": "r", "max_tasks": 5}).json() == {"tasks": []}
    assert httpx.post(f"{api.url}/api/agent/tasks/claim", json={"runner_id": "r"}).status_code == 204
    assert httpx.post(claims, json={"runner_id": "r", "max_tasks": 101}).status_code == 422
    with ApiClient(api.url, token="", retries=0) as client:
        made = client.create_tasks([_item(f"t{i}") for i in range(5)])
        two = client.claim_many("r", 2)
        assert [t.id for t in two] == [made[0].id, made[1].id]
        one = httpx.post(f"{api.url}/api/agent/tasks/claim", json={"runner_id": "r", "max_tasks": 1}).json()
        assert one["id"] == made[2].id  # max_tasks 1: a Task, as before
        several = httpx.post(f"{api.url}/api/agent/tasks/claim", json={"runner_id": "r", "max_tasks": 9}).json()
        assert [t["id"] for t in several["tasks"]] == [made[3].id, made[4].id]

        plain = client.finish(two[0].id, two[0].claim_token, TaskStatus.COMPLETED)
        assert plain.status == TaskStatus.COMPLETED  # without claim_next: a Task, as before
        later = client.create_tasks([_item("later")])[0]
        finished, following = client.finish_and_claim(two[1].id, two[1].claim_token, TaskStatus.FAILED,
                                                      runner_id="r", exit_code=3)
        assert finished.status == TaskStatus.FAILED and finished.exit_code == 3
        assert following is not None and following.id == later.id and following.status == TaskStatus.RUNNING
        _, nothing = client.finish_and_claim(later.id, following.claim_token, TaskStatus.COMPLETED, runner_id="r")
        assert nothing is None

        waiting = client.create_tasks([_item("waits")])[0]
        with pytest.raises(ApiConflict):  # the claim token of another run: refused, and nothing claimed
            client.finish_and_claim(one["id"], one["claim_token"] + 1, TaskStatus.COMPLETED, runner_id="r")
        assert client.get_task(waiting.id).status == TaskStatus.PENDING
        body = {"claim_token": one["claim_token"], "status": "completed", "claim_next": {"runner_id": "r",
                                                                                         "max_tasks": 2}}
        assert httpx.post(f"{api.url}/api/agent/tasks/{one['id']}/finish", json=body).status_code == 422


def test_finished_after_over_http(api: ServedApi) -> None:
    with ApiClient(api.url, token="", retries=0) as client:
        made = client.create_tasks([_item(f"t{i}") for i in range(3)])
        for task in reversed(client.claim_many("r", 3)):
            client.finish(task.id, task.claim_token, TaskStatus.COMPLETED)
        since = (utcnow() - timedelta(minutes=5)).isoformat()
        page = client.list_tasks(status=TaskStatus.COMPLETED, finished_after=since, order="oldest", limit=2)
        assert [t.id for t in page.items] == [made[2].id, made[1].id] and page.total == 3
    naive = httpx.get(f"{api.url}/api/agent/tasks", params={"finished_after": "2026-01-01T00:00:00"})
    assert naive.status_code == 422


def _committed_ids(tmp_path: Path) -> list[list[int]]:
    """The task ids of each commit the watcher made, from commit_progress.log."""
    text = (tmp_path / "home" / "logs" / "commit_progress.log").read_text()
    return [[int(i) for i in ids.split(", ")] for ids in re.findall(r"task ([\d, ]+): committed", text)]


def test_the_watcher_commits_every_completion_since_its_last_look(tmp_path: Path, repo: Path,  # noqa: F811
                                                                  served_api: ServedApi) -> None:
    settings = settings_for(tmp_path, repo, agent_api_base=served_api.url)
    with ApiClient(settings=settings, retries=0) as client:
        def complete(n: int) -> list[int]:
            made = [t for start in range(0, n, 1000) for t in client.create_tasks(
                [_item(f"step {i}", task_type=TaskType.IMPL) for i in range(start, min(n, start + 1000))])]
            while claimed := client.claim_many("r", 100):
                for task in claimed:
                    client.finish(task.id, task.claim_token, TaskStatus.COMPLETED)
            return [t.id for t in made]

        complete(3)
        watcher = gitops.CompletedTaskWatcher(settings, client)
        assert watcher.poll() is None  # the first look: what completed before is not committed
        ids = complete(1100)  # more than two pages of the API between two looks
        (repo / "out.txt").write_text("1\n")
        assert watcher.poll() == "committed"
        assert sorted(_committed_ids(tmp_path)[-1]) == ids
        assert watcher.poll() is None  # nothing new: nothing committed twice
        more = complete(1)
        (repo / "out.txt").write_text("2\n")
        assert watcher.poll() == "committed"
        assert _committed_ids(tmp_path)[-1] == more
