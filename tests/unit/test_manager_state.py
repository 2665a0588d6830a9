"""The project manager's state file across releases: older files load, and what is saved loads back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from coherence_network.manager_state import ItemState, ManagerState

VERSION_1 = {  # as the first release wrote it: no settled_on on items
    "version": 1, "backlog": "backlog.md", "position": 1,
    "items": {"run: false": {
        "key": "run: false", "number": 1, "text": "run: false", "status": "blocked", "phase": "run", "iteration": 1,
        "task_id": 7, "tasks": {"run": [7]}, "results": {}, "reason": "run task 7 failed (exit code 1)",
        "decision_since": None, "updated_at": "2026-11-25T06:00:00+00:00",
    }},
    "in_flight": [], "blocked": [{"item": "run: false", "number": 1, "reason": "run task 7 failed (exit code 1)"}],
    "skipped": [], "problems": [], "started_at": "2026-11-25T05:00:00+00:00", "updated_at": "2026-11-25T06:00:00+00:00",
}


def test_a_version_1_file_loads_with_no_record_of_the_settling_task(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(VERSION_1))
    state = ManagerState.load(path)
    item = state.items["run: false"]
    assert (item.status, item.task_id, item.settled_on) == ("blocked", 7, None)
    assert state.position == 1


def test_fields_a_newer_release_added_are_left_out_rather_than_refused(tmp_path: Path) -> None:
    newer = json.loads(json.dumps(VERSION_1))
    newer["items"]["run: false"]["something_new"] = {"from": "a later release"}
    path = tmp_path / "state.json"
    path.write_text(json.dumps(newer))
    assert ManagerState.load(path).items["run: false"].reason == "run task 7 failed (exit code 1)"


def test_saved_state_loads_back_unchanged(tmp_path: Path) -> None:
    state = ManagerState(backlog="b.md", position=0)
    state.items["x"] = ItemState(key="x", number=1, text="X", status="skipped", task_id=3,
                                 settled_on="2026-11-25T06:00:00+00:00")
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state.to_json()))
    assert ManagerState.load(path).items == state.items
