"""Steering verbs, through the API: pause the whole pipeline or one task type (claims hand out nothing of it,
running tasks finish) and resume it; cancel a task. The actor is ``cli:<OS user>``; the pause is stored, so a
restart keeps it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from coherence_network.cli.api_access import command_client, os_user
from coherence_network.cli.app import app
from coherence_network.contract import PAUSE_ALL, TaskStatus, TaskType
from coherence_network.settings import get_settings

if TYPE_CHECKING:
    from coherence_network.contract import Pause

_NAMES = {"type": "--type", "reason": "--reason", "by": "--by"}
_TYPE_HELP = "The task type; without it, the whole pipeline"


def _shown(pause: Pause) -> str:
    return f"{pause.scope} since {pause.since:%Y-%m-%d %H:%M:%S} UTC by {pause.by}: {pause.reason}"


@app.command()
def pause(
    task_type: TaskType = typer.Option(None, "--type", help=_TYPE_HELP),
    reason: str = typer.Option(..., "--reason", help="Why (shown by status, doctor, the console and /metrics)"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's answer"),
) -> None:
    """Pause the whole pipeline or one task type: runners get nothing of it while running tasks finish (drain).
    Pausing what is paused keeps the first pause and says so. Undo with coherence resume."""
    with command_client(get_settings(), names=_NAMES) as client:
        answer = client.pause(f"cli:{os_user()}", reason, task_type=task_type)
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
    elif answer.pause is not None:
        typer.echo(("paused " if answer.changed else "already paused, kept as it was: ") + _shown(answer.pause))


@app.command()
def resume(
    task_type: TaskType = typer.Option(None, "--type", help=_TYPE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the API's answer"),
) -> None:
    """Resume what coherence pause held: runners waiting for work get it at once. A type's own pause and the whole
    pipeline's are resumed separately."""
    with command_client(get_settings(), names=_NAMES) as client:
        answer = client.resume(f"cli:{os_user()}", task_type=task_type)
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
    elif answer.pause is not None:
        typer.echo(f"resumed {answer.pause.scope} (it was paused {_shown(answer.pause)})")
    else:
        typer.echo(f"{task_type or PAUSE_ALL} was not paused: nothing changed")


@app.command()
def cancel(
    task_id: int = typer.Argument(..., help="The task to cancel"),
    reason: str = typer.Option(..., "--reason", help="Why (required: kept on the task and in the audit trail)"),
    as_json: bool = typer.Option(False, "--json", help="Print the task as the API answers it"),
) -> None:
    """Cancel a task: pending or needs_decision at once; a running one is stopped by its runner (its whole process
    group: SIGTERM, then SIGKILL after AGENT_KILL_GRACE_SECONDS) at its next lease renewal. Exit 1 when the task
    is completed or failed (or unknown). Undo with coherence retry ID."""
    with command_client(get_settings(), conflict="not cancelled", names=_NAMES) as client:
        task = client.cancel(task_id, reason)
    if as_json:
        typer.echo(task.model_dump_json(indent=2))
    elif task.status == TaskStatus.CANCELLED:
        typer.echo(f"task {task.id} cancelled by {task.cancelled_by}: {task.cancel_reason}")
    else:
        typer.echo(f"task {task.id} is running: cancel requested by {task.cancelled_by} "
                   f"({task.cancel_reason}); its runner stops it at its next lease renewal")
