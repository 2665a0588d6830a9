"""The issue book on both stores: fatal issues cleared up to a time (a `coherence fatal --clear` applied after the API
came back), and monitor issues kept per (host, rule), so one host's monitor never resolves another host's issues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from coherence_network.store import TaskStore
from coherence_network.store.schema import monitor_issues

T0 = datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=UTC)


def issue(rule: str, message: str = "m") -> dict[str, object]:
    return {"rule": rule, "severity": "high", "message": message, "action": "a", "runbook": "#r", "detail": None}


def test_clear_before_a_time_leaves_newer_issues(store: TaskStore) -> None:
    for at, component in ((T0, "monitor"), (T0 + timedelta(seconds=10), "api")):
        store.add_fatal_issue({"at": at, "component": component, "reason": "crashed"}, "host")
    assert store.clear_fatal_issues(before=T0) == 1  # "at or before": the same instant counts
    assert [i["component"] for i in store.list_fatal_issues()] == ["api"]
    assert store.clear_fatal_issues() == 1
    assert store.open_fatal_issue_count() == 0


def test_each_host_resolves_only_its_own_monitor_issues(store: TaskStore) -> None:
    """Two hosts report the same rule: both stay open; one host's all-clear resolves its own row only."""
    assert store.replace_monitor_issues([issue("disk_full", "a full"), issue("log_errors")], "host-a") == \
        {"open": 2, "resolved": 0}
    assert store.replace_monitor_issues([issue("disk_full", "b full")], "host-b") == {"open": 1, "resolved": 0}

    def open_now() -> set[tuple[str, str, str]]:
        return {(i["host"], i["rule"], i["message"]) for i in store.list_monitor_issues()["issues"]}

    assert open_now() == {("host-a", "disk_full", "a full"), ("host-a", "log_errors", "m"),
                          ("host-b", "disk_full", "b full")}
    assert store.replace_monitor_issues([], "host-b") == {"open": 0, "resolved": 1}  # b is fine again
    assert open_now() == {("host-a", "disk_full", "a full"), ("host-a", "log_errors", "m")}
    assert store.replace_monitor_issues([issue("disk_full", "a still full")], "host-a") == {"open": 1, "resolved": 1}
    assert open_now() == {("host-a", "disk_full", "a still full")}
    resolved = store.list_monitor_issues()["recently_resolved"]
    assert sorted((i["host"], i["rule"]) for i in resolved) == [("host-a", "log_errors"), ("host-b", "disk_full")]
    assert store.monitor_issue_counts(T0) == {"open": 1, "resolved": 2}
    # the store holds the key: a second open row for one (host, rule) is refused
    with pytest.raises(sa.exc.IntegrityError), store.transaction() as conn:
        conn.execute(monitor_issues.insert().values(rule="disk_full", host="host-a", severity="high", message="m",
                                                    action="", runbook="", first_seen=T0, last_seen=T0))
