"""Fatal issues: components the supervisor could not keep running. Kept in var/logs/fatal_issues.json on the host
(readable with the API down, which may be the very thing that failed) and in the store through the API (readable
from anywhere)."""

from __future__ import annotations

import json
import logging
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from coherence_network.client import ApiClient, ApiError
from coherence_network.logfiles import REGISTRY, write_json_atomic
from coherence_network.settings import Settings

log = logging.getLogger("coherence.fatal")
PATH_API = "/api/agent/fatal-issues"


def _path(settings: Settings) -> Path:
    return REGISTRY["fatal_issues.json"].path(settings)


def load_local(settings: Settings) -> list[dict[str, Any]]:
    try:
        data = json.loads(_path(settings).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError as exc:
        log.error("fatal_issues.json is unreadable (%s); treated as one fatal issue", exc)
        return [{"at": None, "component": "fatal_issues.json", "reason": "file unreadable", "detail": str(exc),
                 "recovery_tried": ""}]
    return data if isinstance(data, list) else []


def record(settings: Settings, component: str, reason: str, detail: str, recovery_tried: str,
           client: ApiClient | None) -> dict[str, Any]:
    """Append to the local file first (always works), then tell the API if it answers."""
    issue = {"at": datetime.now(timezone.utc).isoformat(), "component": component, "reason": reason,
             "detail": detail[-20000:], "recovery_tried": recovery_tried}
    write_json_atomic(_path(settings), [*load_local(settings), issue])
    last_line = (detail.strip().splitlines() or ["(no output)"])[-1]
    log.error("FATAL %s: %s; last output line: %s; recovery tried: %s (whole record: coherence fatal)", component,
              reason, last_line, recovery_tried)
    if client is not None:
        try:
            client.post(PATH_API, {**issue, "host": socket.gethostname()}, retries=0)
        except ApiError as exc:
            log.warning("fatal issue not stored through the API (%s); it is in %s", exc, _path(settings))
    return issue


def gather(settings: Settings, client: ApiClient | None) -> tuple[list[dict[str, Any]], str | None]:
    """Local fatal issues plus those other hosts reported through the API; and why the API was not asked, if so."""
    issues = load_local(settings)
    if client is None:
        return issues, "not asked"
    try:
        remote = client.get(PATH_API)["items"]
    except ApiError as exc:
        return issues, f"API unreachable: {exc.detail}"
    seen = {(i.get("component"), str(i.get("at"))[:19]) for i in issues}
    issues += [i for i in remote if (i["component"], str(i["at"])[:19]) not in seen]
    return issues, None


def clear(settings: Settings, client: ApiClient | None) -> tuple[int, str | None]:
    """Forget fatal issues here and in the store; returns (cleared here, API error if the store was not cleared)."""
    local = len(load_local(settings))
    _path(settings).unlink(missing_ok=True)
    if client is None:
        return local, None
    try:
        client.request("DELETE", PATH_API, retries=0)
    except ApiError as exc:
        return local, str(exc.detail)
    return local, None
