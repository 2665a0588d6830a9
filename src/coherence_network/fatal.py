"""Fatal issues: components the supervisor could not keep running. Kept in var/logs/fatal_issues.json on the host
(readable with the API down, which may be the very thing that failed) and in the store through the API (readable
from anywhere, counted by the coherence_fatal_issues gauge that alerts watch).

Either copy may be unreachable when it changes, so what the store has not heard yet is kept on the host and told
to it when the API next answers (``sync``: the supervisor on start and while it runs, ``coherence fatal``): an
issue recorded while the API was down (``stored`` false in the local file), and a clear the operator asked for
then (var/logs/fatal_clear_pending.json, the time of the clear: issues recorded up to then are cleared in the
store, a newer one is not). So ``coherence fatal --clear`` is one command that sticks, API up or down."""

from __future__ import annotations

import json
import logging
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coherence_network.client import ApiClient, ApiError
from coherence_network.logfiles import REGISTRY, write_json_atomic
from coherence_network.settings import Settings

log = logging.getLogger("coherence.fatal")


def _path(settings: Settings) -> Path:
    return REGISTRY["fatal_issues.json"].path(settings)


def _pending_path(settings: Settings) -> Path:
    return REGISTRY["fatal_clear_pending.json"].path(settings)


def load_local(settings: Settings) -> list[dict[str, Any]]:
    try:
        data = json.loads(_path(settings).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError as exc:
        log.error("fatal_issues.json is unreadable (%s); treated as one fatal issue", exc)
        return [{"at": None, "component": "fatal_issues.json", "reason": "file unreadable", "detail": str(exc),
                 "recovery_tried": "", "stored": True}]
    return data if isinstance(data, list) else []


def pending_clear(settings: Settings) -> tuple[str, str | None] | None:
    """A clear the store has not applied yet: its time (ISO 8601) and who asked for it (the actor of the audit
    trail, e.g. cli:alice); None when there is none."""
    try:
        data = json.loads(_pending_path(settings).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:  # a torn or foreign file: clear everything up to now rather than keep an old flag
        return datetime.now(UTC).isoformat(), None
    if not isinstance(data, dict) or not data.get("before"):
        return None
    return str(data["before"]), str(data["by"]) if data.get("by") else None


def record(settings: Settings, component: str, reason: str, detail: str, recovery_tried: str,
           client: ApiClient | None) -> dict[str, Any]:
    """Append to the local file first (always works), then tell the API if it answers (else ``sync`` does later)."""
    issue = {"at": datetime.now(UTC).isoformat(), "component": component, "reason": reason,
             "detail": detail[-20000:], "recovery_tried": recovery_tried, "stored": False}
    write_json_atomic(_path(settings), [*load_local(settings), issue])
    last_line = (detail.strip().splitlines() or ["(no output)"])[-1]
    log.error("FATAL %s: %s; last output line: %s; recovery tried: %s (whole record: coherence fatal)", component,
              reason, last_line, recovery_tried)
    if client is not None:
        sync(settings, client)
    return issue


def sync(settings: Settings, client: ApiClient) -> str | None:
    """Tell the store what it has not heard: a pending clear first, then the issues recorded while it was away.
    None when the store is up to date, else why not (it stays pending here; safe to call again)."""
    pending = pending_clear(settings)
    try:
        if pending is not None:
            before, by = pending
            client.clear_fatal_issues(before, by=by)
            _pending_path(settings).unlink(missing_ok=True)
            log.info("fatal issues recorded up to %s cleared in the store (the clear asked for while the API was "
                     "unreachable)", before)
        issues = load_local(settings)
        for issue in issues:
            if issue.get("stored") is False:
                client.report_fatal_issue(component=issue["component"], reason=issue["reason"],
                                          detail=issue["detail"], recovery_tried=issue["recovery_tried"],
                                          host=socket.gethostname(), at=issue["at"])
                issue["stored"] = True
                write_json_atomic(_path(settings), issues)  # one by one: a failure never posts one twice
    except ApiError as exc:
        log.warning("fatal issues not synced with the store (%s); they are in %s", exc, _path(settings))
        return str(exc.detail)
    return None


def gather(settings: Settings, client: ApiClient | None) -> tuple[list[dict[str, Any]], str | None]:
    """Local fatal issues plus those other hosts reported through the API; and why the API was not asked, if so."""
    if client is None:
        return load_local(settings), "not asked"
    api_error = sync(settings, client)
    issues = load_local(settings)
    try:
        remote = [i.model_dump(mode="json") for i in client.fatal_issues().items]
    except ApiError as exc:
        return issues, f"API unreachable: {exc.detail}"
    seen = {(i.get("component"), str(i.get("at"))[:19]) for i in issues}
    issues += [i for i in remote if (i["component"], str(i["at"])[:19]) not in seen]
    return issues, api_error and f"not synced with the API: {api_error}"


def clear(settings: Settings, client: ApiClient | None, by: str) -> tuple[int, str | None]:
    """Forget fatal issues here and in the store; returns (cleared here, why the store's copy is not cleared yet:
    then it is cleared by the next ``sync``, so the clear sticks either way, in the audit trail as ``by``'s)."""
    local = len(load_local(settings))
    write_json_atomic(_pending_path(settings), {"before": datetime.now(UTC).isoformat(), "by": by})
    _path(settings).unlink(missing_ok=True)
    if client is None:
        return local, "not asked"
    return local, sync(settings, client)


def held_issue_cleared(settings: Settings, issue: dict[str, Any]) -> bool:
    """Whether ``issue`` (as ``record`` returned it) has been cleared here: the supervisor then starts its
    component again."""
    return not any(i.get("component") == issue["component"] and i.get("at") == issue["at"]
                   for i in load_local(settings))
