"""Clearing fatal issues up to a time (a `coherence fatal --clear` applied after the API came back): what was
recorded by then is cleared, a newer issue stays. Both stores: the time comparison is the database's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coherence_network.store import ops_issues
from coherence_network.store.db import create_store_engine, migrate

T0 = datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=UTC)


def test_clear_before_a_time_leaves_newer_issues(migrated_store_url: str) -> None:
    engine = create_store_engine(migrated_store_url)
    try:
        migrate(engine)
        for at, component in ((T0, "monitor"), (T0 + timedelta(seconds=10), "api")):
            ops_issues.add_fatal_issue(engine, {"at": at, "component": component, "reason": "crashed"}, "host")
        assert ops_issues.clear_fatal_issues(engine, before=T0) == 1  # "at or before": the same instant counts
        assert [i["component"] for i in ops_issues.list_fatal_issues(engine)] == ["api"]
        assert ops_issues.clear_fatal_issues(engine) == 1
        assert ops_issues.open_fatal_issue_count(engine) == 0
    finally:
        engine.dispose()
