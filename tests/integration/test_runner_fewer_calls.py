"""The runner's calls per task (issue 14): idle slots share one claim of several, and a result is delivered with
the claim of the slot's next task. Seen from the store: tasks claimed together carry one claim request id, and a
task claimed with a finish starts at the very moment that finish was stamped (one transaction)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import Task, TaskStatus, TaskType
from tests.integration.test_runner import py, runner
from tests.support.api import ServedApi


@pytest.fixture
def client(served_api: ServedApi) -> Iterator[ApiClient]:
    with ApiClient(served_api.url, token="", retries=0) as c:
        yield c


def _make(client: ApiClient, n: int) -> list[Task]:
    return client.create_tasks([{"direction": f"t{i}", "task_type": TaskType.RUN, "command": py(f"print({i})")}
                                for i in range(n)])


def test_three_idle_slots_claim_three_tasks_in_one_call(served_api: ServedApi, client: ApiClient) -> None:
    made = _make(client, 3)
    assert runner(served_api, "--once", "--workers", "3").run().returncode == 0
    done = [client.get_task(t.id) for t in made]
    assert [t.status for t in done] == [TaskStatus.COMPLETED] * 3
    assert len({t.model_extra["claim_request_id"] for t in done}) == 1


def test_a_slot_claims_its_next_task_with_the_result_of_the_last(served_api: ServedApi,
                                                                 client: ApiClient) -> None:
    made = _make(client, 3)
    assert runner(served_api, "--once", "--workers", "1").run().returncode == 0
    done = [client.get_task(t.id) for t in made]
    assert [t.status for t in done] == [TaskStatus.COMPLETED] * 3
    assert [t.started_at for t in done[1:]] == [t.finished_at for t in done[:-1]]
