"""No read writes: pipeline-status, every /metrics scrape and the console's overview leave the store as it was, on
both stores. Runner rows past their time, which those reads used to delete, are hidden at once and deleted by the
API's own registry pass (a write path, counted in coherence_runners_pruned_total)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from coherence_network.api.app import create_app
from coherence_network.clock import utcnow
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.settings import Settings
from coherence_network.store import TaskStore
from coherence_network.store.schema import metadata, runners


@pytest.fixture
def app(migrated_store_url: str, tmp_path: Path) -> Iterator[Any]:
    """The app without its lifespan: no background pass runs, so any write a request makes is the request's own."""
    settings = Settings(_env_file=None, coherence_home=tmp_path / "home", database_url=migrated_store_url,
                        coherence_runner_forget_seconds=3600, coherence_runner_forget_stopped_seconds=600)
    app = create_app(settings)
    yield app
    app.state.store.dispose()


def every_row(store: TaskStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the schema knows, in a stable order."""
    with store.connection() as conn:
        return {table.name: sorted(map(tuple, conn.execute(sa.select(table))), key=repr)
                for table in metadata.sorted_tables}


def test_reads_leave_the_store_unchanged_and_the_registry_pass_forgets(app: Any) -> None:
    store: TaskStore = app.state.store
    long_ago = utcnow() - timedelta(hours=2)
    for runner_id, info in (("live", None), ("dead", None), ("stopped", {"stopped": "SIGTERM"})):
        store.runner_heartbeat(runner_id, host="h", pid=1, version="t", info=info)
    with store.transaction() as conn:  # one silent for 2 h (dead: forgotten after 1 h), one stopped 2 h ago
        conn.execute(runners.update().where(runners.c.id != "live").values(last_seen=long_ago))
    for direction in ("done", "waiting"):
        store.create(direction=direction, task_type=TaskType.RUN, command="true")
    claimed = store.claim("live")
    assert claimed is not None
    store.finish(claimed["id"], claimed["claim_token"], status=TaskStatus.COMPLETED, output="ok")
    before = every_row(store)
    assert {row[0] for row in before["runners"]} == {"live", "dead", "stopped"}

    client = TestClient(app)  # no ``with``: the lifespan (and its background passes) stays off
    status = client.get("/api/agent/pipeline-status")
    assert status.status_code == 200
    assert [r["id"] for r in status.json()["runners"]] == ["live"]  # the forgotten are not shown...
    scraped = client.get("/metrics").text
    assert 'coherence_runners{state="alive"} 1.0' in scraped and 'coherence_runners{state="dead"} 0.0' in scraped
    overview = client.get("/")
    assert overview.status_code == 200
    assert every_row(store) == before  # ...and not one row changed

    assert app.state.metrics.forget_runners() == 2  # the API's registry pass deletes them, counted
    assert [r["id"] for r in store.runners()] == ["live"]
    assert "coherence_runners_pruned_total 2.0" in client.get("/metrics").text
