"""``coherence bulk cancel|retry``: many tasks by a filter, in the API's two steps. The preview's count and newest
few are shown first; the act follows with --yes, or once confirmed on a terminal. Without a terminal and without
--yes nothing is done (the preview is printed and the exit is 0), so a script never acts by accident."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer

from coherence_network.cli.api_access import command_client
from coherence_network.cli.app import app
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.contract_steering import BulkAction
from coherence_network.settings import get_settings

if TYPE_CHECKING:
    from coherence_network.contract_steering import BulkPreview, BulkResult

_NAMES = {"filter.status": "--status", "filter.type": "--type", "filter.created_before": "--created-before",
          "filter.created_after": "--created-after", "filter.text": "--text", "reason": "--reason",
          "filter": "the filter (--status, --type, --created-before, --created-after, --text)",
          "token": "the preview's token"}
_DONE = {BulkAction.CANCEL: "cancelled", BulkAction.RETRY: "retried"}


def _preview_text(preview: BulkPreview) -> str:
    lines = [f"{preview.action.value} would take {preview.count:,} task{'' if preview.count == 1 else 's'}"
             + (", the newest:" if preview.sample else ".")]
    lines += [f"  #{t.id} {t.task_type} {t.status.value} {t.created_at:%Y-%m-%d %H:%M} {t.direction[:80]!r}"
              for t in preview.sample]
    return "\n".join(lines)


def _result_text(result: BulkResult) -> str:
    text = f"{_DONE[result.action]} {result.acted:,} of the {result.previewed:,} tasks previewed"
    if result.skipped:
        text += f"; {result.skipped:,} matched but had changed meanwhile (skipped)"
    elif result.changed:
        text += "; the count changed since the preview"
    return text + (" (this token had acted before: nothing more was done)" if result.repeated else "")


@app.command()
def bulk(
    action: BulkAction = typer.Argument(..., help="cancel (pending, waiting or running tasks) or retry (failed or "
                                                  "cancelled tasks)"),
    status: TaskStatus = typer.Option(None, "--status", help="Only tasks in this status"),
    task_type: TaskType = typer.Option(None, "--type", help="Only tasks of this type"),
    created_before: str = typer.Option(None, "--created-before", help="Only tasks created before this ISO 8601 "
                                                                      "time with a zone, e.g. 2026-11-25T06:00:00Z"),
    created_after: str = typer.Option(None, "--created-after", help="Only tasks created after this time"),
    text: str = typer.Option(None, "--text", help="Only tasks holding every word (as the console's search)"),
    reason: str = typer.Option(..., "--reason", help="Why (kept in each task's audit record)"),
    yes: bool = typer.Option(False, "--yes", help="Act without asking (else asked on a terminal; elsewhere the "
                                                  "preview is printed and nothing is done)"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's answers as {preview, result}; asks nothing "
                                                       "(result null without --yes)"),
) -> None:
    """Cancel or retry every task a filter matches (at least one of --status, --type, --created-before,
    --created-after, --text): the count and the newest few first, then the act. Tasks created after the preview
    are never touched; each task moved gets its own audit record with the reason."""
    terms: dict[str, Any] = {"status": status, "type": task_type, "created_before": created_before,
                             "created_after": created_after, "text": text}
    terms = {k: v for k, v in terms.items() if v is not None}
    with command_client(get_settings(), names=_NAMES) as client:
        preview = client.bulk_preview(action, **terms)
        if not as_json:
            typer.echo(_preview_text(preview) if preview.count else f"No task matches: nothing to {action.value}.")
        go = preview.count > 0 and (yes or (sys.stdin.isatty() and not as_json and typer.confirm(
            f"{action.value.capitalize()} these {preview.count:,} tasks?", default=False)))
        result = client.bulk_act(action, preview.token, reason, **terms) if go else None
    if as_json:
        answers = {"preview": preview.model_dump(mode="json"),
                   "result": None if result is None else result.model_dump(mode="json")}
        typer.echo(json.dumps(answers, indent=2))
    elif result is not None:
        typer.echo(_result_text(result))
    elif preview.count and not yes:
        typer.echo("Nothing was done" + ("." if sys.stdin.isatty() else
                                         " (not a terminal: add --yes to act)."))
