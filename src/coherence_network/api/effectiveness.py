"""The effectiveness figures, one formula for the API (/api/agent/effectiveness), the console's overview and doctor
(which reads the API's): backlog progress, and the goal proximity over progress, success rate and health."""

from __future__ import annotations

import json
from typing import Any

from coherence_network.contract import ItemStatus, TaskStatus
from coherence_network.health import MANAGER
from coherence_network.logfiles import REGISTRY
from coherence_network.settings import Settings
from coherence_network.store import TaskStore


def backlog_progress(store: TaskStore, settings: Settings) -> dict[str, Any] | None:
    """Backlog items by status: from the project manager's heartbeat (any replica), else its state file here."""
    manager = next((c for c in store.components() if c["name"] == MANAGER), None)
    info = (manager or {}).get("info") or {}
    if "items" in info and "by_status" in info:
        by_status, total, source = info["by_status"], int(info["items"]), "heartbeat"
    else:
        try:
            state = json.loads(REGISTRY["project_manager_state.json"].path(settings).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        by_status = {}
        for item in state.get("items", {}).values():
            by_status[item["status"]] = by_status.get(item["status"], 0) + 1
        total, source = len(state.get("items", {})), "state_file"
    done = int(by_status.get(ItemStatus.DONE, 0))
    return {"items": total, "by_status": by_status, "done": done,
            "fraction_done": round(done / total, 4) if total else None, "source": source}


def goal_proximity(
    backlog: dict[str, Any] | None, counts: dict[str, Any], success_rate: float | None, health_term: float
) -> dict[str, Any]:
    """0.6 x progress + 0.25 x success rate (7 d) + 0.15 x health, each in 0..1.

    progress: backlog items done / items (without a backlog: completed tasks / all tasks); success: 1 when nothing
    finished yet; health: grading.health_term over the open flags and host issues (1 with none or only low ones,
    0.75 with a medium, 0.5 with a high, 0 with a critical or a fatal issue)."""
    if backlog and backlog["items"]:
        progress = backlog["done"] / backlog["items"]
    else:
        total = counts.get("total", 0)
        progress = counts.get("by_status", {}).get(TaskStatus.COMPLETED, 0) / total if total else 0.0
    success = 1.0 if success_rate is None else success_rate
    value = round(0.6 * progress + 0.25 * success + 0.15 * health_term, 3)
    return {"value": value, "progress": round(progress, 4), "success": round(success, 4), "health": health_term,
            "formula": "0.6*progress + 0.25*success_rate_7d + 0.15*health"}
