"""``coherence audit``: the audit trail through the API, newest first: who did what to which task or target, through
which channel, when and why, with the task's status before and after."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import typer

from coherence_network.cli.api_access import command_client
from coherence_network.cli.app import app
from coherence_network.clock import utcnow
from coherence_network.settings import get_settings

if TYPE_CHECKING:
    from coherence_network.contract_steering import AuditRecord

_NAMES = {"task_id": "--task", "actor": "--actor", "action": "--action", "since": "--since", "limit": "--limit",
          "before_id": "--before-id", "channel": "--channel"}
_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
REASON_SHOWN_CHARS = 60


def since_time(value: str | None) -> str | None:
    """``--since``: a time ago (30m, 2h, 7d) or an ISO 8601 time (UTC when it names no zone), as ISO 8601; a usage
    error (exit 2) otherwise, before any request."""
    if value is None:
        return None
    ago = _AGO.fullmatch(value.strip())
    if ago:
        return (utcnow() - timedelta(seconds=float(ago.group(1)) * _UNIT_SECONDS[ago.group(2)])).isoformat()
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither a time ago (30m, 2h, 7d) nor an ISO 8601 time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def audit_line(record: AuditRecord) -> str:
    """One record as a row of the table: time, actor, channel, action, task or target, before->after, reason."""
    what = f"#{record.task_id}" if record.task_id is not None else (record.target or "-")
    moved = f"{record.status_before or ''}->{record.status_after or ''}" if record.status_before or \
        record.status_after else "-"
    reason = " ".join((record.reason or "-").split())
    reason = reason if len(reason) <= REASON_SHOWN_CHARS else reason[:REASON_SHOWN_CHARS - 1] + "…"
    return (f"{record.at:%Y-%m-%d %H:%M:%S}  {record.actor[:24]:<24}  {record.channel:<8}  {record.action:<14}  "
            f"{what[:20]:<20}  {moved:<24}  {reason}")


@app.command()
def audit(
    task_id: int = typer.Option(None, "--task", min=1, help="Only this task's records"),
    actor: str = typer.Option(None, "--actor", help="Only this actor's, e.g. cli:alice, console:bob, api"),
    action: str = typer.Option(None, "--action", help="Only this action: create, decide, retry, cancel, pause, "
                               "resume, restart, prune, clear_fatal, sign_in, sign_in_failed..."),
    channel: str = typer.Option(None, "--channel", help="Only this channel: cli, console, telegram or api"),
    since: str = typer.Option(None, "--since", callback=since_time, help="Only records since then: a time ago "
                              "(30m, 2h, 7d) or an ISO 8601 time (UTC unless it names a zone)"),
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="Records shown (the newest first)"),
    before_id: int = typer.Option(None, "--before-id", min=1, help="Only records older than this id (the next "
                                  "page, as the last line says)"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's page as JSON: {items, limit, "
                                 "next_before_id}"),
) -> None:
    """Read the audit trail: every operator action (create, decide, retry, cancel, pause, resume, restart, prune,
    clearing fatal issues, console sign-in) with its actor, channel, task or target, the task's status before and
    after, and the reason; newest first. Exit 2 when the API cannot be reached or refuses a filter."""
    with command_client(get_settings(), names=_NAMES) as client:
        page = client.audit(limit=limit, before_id=before_id, actor=actor, channel=channel, action=action,
                            task_id=task_id, since=since)
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    if not page.items:
        typer.echo("no audit records match")
        return
    typer.echo(f"{'time (UTC)':<19}  {'actor':<24}  {'channel':<8}  {'action':<14}  {'task/target':<20}  "
               f"{'before->after':<24}  reason")
    for record in page.items:
        typer.echo(audit_line(record))
    if page.next_before_id is not None:
        typer.echo(f"(older records: coherence audit --before-id {page.next_before_id} with the same filters)")
