"""`coherence restart`: the restart request the supervisor acts on (var/logs/restart_requested.json), written the
one way a reader never sees half of it, so operators no longer hand-write JSON for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coherence_network.logfiles import REGISTRY, write_json_atomic
from coherence_network.pidfiles import holder
from coherence_network.settings import Settings
from coherence_network.supervisor import COMPONENTS, SELF

TARGETS = (*COMPONENTS, "all")  # what Supervisor.handle_restart_request understands


@dataclass(frozen=True)
class RestartRequest:
    """What was asked, whether a supervisor runs to act on it, and what it replaced."""

    path: Path
    request: dict[str, Any]
    supervisor_pid: int | None  # None: no supervisor holds its lock, so nothing was written
    replaced: dict[str, Any] | None = None  # an earlier request the supervisor had not acted on yet


def request_restart(settings: Settings, component: str, reason: str,
                    announce: Callable[[], None] | None = None) -> RestartRequest:
    """Write {reason, component, at} for the supervisor of this COHERENCE_HOME. Without a running supervisor nothing
    would act on it (and the next one would restart what it had just started), so nothing is written then.
    ``announce`` runs once a supervisor is there, before the request is written: the audit trail's record, made
    while the API (which may be what restarts) still answers."""
    if component not in TARGETS:
        raise ValueError(f"unknown component {component!r}; choose from {', '.join(TARGETS)}")
    path = REGISTRY["restart_requested.json"].path(settings)
    request = {"reason": reason, "component": component, "at": datetime.now(UTC).isoformat()}
    pid = holder(settings, SELF)
    if pid is None:
        return RestartRequest(path, request, None)
    if announce is not None:
        announce()
    replaced = _read(path)
    write_json_atomic(path, request)
    return RestartRequest(path, request, pid, replaced)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return found if isinstance(found, dict) else None
