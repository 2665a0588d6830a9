"""The project manager's own progress through the backlog, in ``var/logs/project_manager_state.json``: one record
per item (its status, phase, round and tasks), so a restarted manager resumes where it stopped."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from coherence_network.clock import utcnow
from coherence_network.contract import ItemStatus
from coherence_network.logfiles import REGISTRY
from coherence_network.settings import Settings

SETTLED = frozenset({ItemStatus.DONE, ItemStatus.BLOCKED, ItemStatus.SKIPPED, ItemStatus.CANCELLED})
ACTIVE = frozenset({ItemStatus.IN_PROGRESS, ItemStatus.NEEDS_DECISION})


@dataclass
class ItemState:
    """Progress of one backlog item. ``status``: waiting, in_progress, needs_decision, done, blocked, skipped,
    cancelled."""

    key: str
    number: int
    text: str
    status: str = ItemStatus.WAITING
    phase: str | None = None
    iteration: int = 1
    task_id: int | None = None
    tasks: dict[str, list[int]] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    decision_since: str | None = None
    settled_on: str | None = None  # the task's updated_at when the item settled on it; a later change reopens it
    updated_at: str = field(default_factory=lambda: utcnow().isoformat())


@dataclass
class ManagerState:
    backlog: str = ""
    position: int = 0  # backlog items, from the top, that are settled (done, blocked or skipped)
    items: dict[str, ItemState] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: utcnow().isoformat())
    updated_at: str = ""

    @classmethod
    def load(cls, path: Path) -> ManagerState:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(ItemState)}  # older files lack newer fields; a newer file's extras are left
        items = {
            key: ItemState(**{k: v for k, v in value.items() if k in known})
            for key, value in data.get("items", {}).items()
        }
        return cls(
            backlog=data.get("backlog", ""),
            position=data.get("position", 0),
            items=items,
            problems=data.get("problems", []),
            started_at=data.get("started_at", utcnow().isoformat()),
            updated_at=data.get("updated_at", ""),
        )

    def listed(self, status: str) -> list[dict[str, Any]]:
        return [
            {"item": i.key, "number": i.number, "reason": i.reason} for i in self.items.values() if i.status == status
        ]

    def in_flight(self) -> list[int]:
        return [i.task_id for i in self.items.values() if i.status in ACTIVE and i.task_id is not None]

    def to_json(self) -> dict[str, Any]:
        """The file's shape: the items plus lists derived from them, for readers (status pages, operators)."""
        return {
            "backlog": self.backlog,
            "position": self.position,
            "items": {key: asdict(item) for key, item in self.items.items()},
            "in_flight": self.in_flight(),
            "blocked": self.listed(ItemStatus.BLOCKED),
            "skipped": self.listed(ItemStatus.SKIPPED),
            "problems": self.problems,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
        }


def default_state_file(settings: Settings) -> Path:
    return REGISTRY["project_manager_state.json"].path(settings)
