"""When a running task last printed, as the store keeps it: each lease renewal's ``silent_seconds`` sets
``last_output_at`` (the API's clock less the silence), and a new claim clears a previous run's, so a retried task is
never flagged stalled for its earlier run's silence. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from coherence_network.clock import utcnow
from coherence_network.health import gather
from coherence_network.settings import Settings
from coherence_network.store import TaskStore


def test_renewals_record_the_silence_and_a_new_claim_forgets_the_last_runs(store: TaskStore) -> None:
    task = store.create(direction="quiet", task_type="run", command="true")
    claimed = store.claim("r1")
    assert claimed is not None and claimed["last_output_at"] is None
    before = utcnow()
    renewed = store.heartbeat(task["id"], claimed["claim_token"], silent_seconds=900.0)
    assert before - timedelta(seconds=901) <= renewed["last_output_at"] <= utcnow() - timedelta(seconds=899)
    assert store.heartbeat(task["id"], claimed["claim_token"])["last_output_at"] == renewed["last_output_at"]
    running = gather(store, Settings(_env_file=None), utcnow()).running
    assert [round(t["silent_seconds"] / 60) for t in running] == [15]

    store.finish(task["id"], claimed["claim_token"], status="pending")  # released: claimed again from the start
    again = store.claim("r2")
    assert again is not None and again["id"] == task["id"] and again["last_output_at"] is None
    assert gather(store, Settings(_env_file=None), utcnow()).running[0]["silent_seconds"] is None
