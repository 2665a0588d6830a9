"""The automatic retry's backoff (store/failures.py) and how a failure is worded (status_view.failure_note)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from coherence_network.contract import Task
from coherence_network.status_view import failure_note
from coherence_network.store.failures import backoff_seconds

NOW = datetime(2026, 12, 3, 22, 0, tzinfo=UTC)


@given(attempts=st.integers(1, 10_000), base=st.floats(0, 1e6), cap=st.floats(0, 1e7), draw=st.floats(0, 1))
def test_the_backoff_stays_between_half_its_ceiling_and_the_largest_delay(attempts: int, base: float, cap: float,
                                                                          draw: float) -> None:
    ceiling = min(cap, base * 2.0 ** min(attempts - 1, 64))
    delay = backoff_seconds(attempts, base, cap, draw)
    assert ceiling * 0.5 <= delay <= ceiling <= cap


def test_the_backoff_doubles_per_attempt_up_to_the_largest_delay() -> None:
    assert [backoff_seconds(k, 30, 3600, 1.0) for k in (1, 2, 3, 8, 9)] == [30, 60, 120, 3600, 3600]
    assert backoff_seconds(1, 30, 3600, 0.0) == 15  # equal jitter: never under half


def _task(**fields: object) -> Task:
    return Task.model_validate({"id": 7, "direction": "d", "task_type": "run", "status": "failed",
                                "created_at": NOW, "updated_at": NOW, **fields})


def test_a_failure_is_worded_the_same_in_every_view() -> None:
    failed = _task(error_category="timeout", error_summary="timed out\n after 5 s")
    assert failure_note(failed, NOW) == "timeout: timed out after 5 s"
    waiting = _task(status="pending", error_category="timeout", not_before=NOW + timedelta(minutes=5))
    assert failure_note(waiting, NOW) == "retrying at 22:05:00 UTC after timeout"
    assert failure_note(waiting.model_dump(), NOW + timedelta(minutes=6)) == "timeout"  # due: no longer waiting
    assert failure_note(_task(status="completed"), NOW) == ""
