"""Type policies, through the API: ``coherence policy`` shows every task type's policy (a limit of running tasks
that the claim enforces, retry delays, the breaker's threshold), each field an operator did not set marked as the
default; ``coherence policy set TYPE`` changes the fields given (``none`` puts one back to its default). The actor
is ``cli:<OS user>``; every change is in the audit trail."""

from __future__ import annotations

import typer

from coherence_network.cli.api_access import command_client, os_user
from coherence_network.cli.app import app
from coherence_network.contract import TaskType
from coherence_network.contract_steering import POLICY_FIELDS, TypePolicy
from coherence_network.settings import get_settings

policy_app = typer.Typer(help="Show every task type's policy, or change one (policy set TYPE ...).",
                         no_args_is_help=False, invoke_without_command=True)
app.add_typer(policy_app, name="policy")

_NAMES = {"max_running": "--max-running", "retry_delay_seconds": "--retry-delay",
          "retry_max_delay_seconds": "--retry-max-delay", "breaker_failures": "--breaker-failures", "by": "--by"}
_CLEARED = ("none", "default")
_COLUMNS = ("max_running", "retry_delay_seconds", "retry_max_delay_seconds", "breaker_failures")
_HEADERS = ("MAX RUNNING", "RETRY DELAY", "RETRY MAX DELAY", "BREAKER")


def _field(policy: TypePolicy, name: str, defaults: dict[str, float | int | None]) -> str:
    value = getattr(policy, name)
    if value is not None:
        return f"{value:g}" if isinstance(value, float) else str(value)
    default = defaults.get(name)
    if name == "max_running" and default is None:
        return "no limit (default)"
    return "default" if default is None else f"{default:g} (default)"


@policy_app.callback()
def policy(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the API's answer"),
) -> None:
    """Every task type's policy: its limit of running tasks (and how many run now), retry delays and breaker; a
    field nobody set shows its default. Change one with coherence policy set TYPE."""
    if ctx.invoked_subcommand is not None:
        return
    with command_client(get_settings()) as client:
        answer = client.policies()
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
        return
    rows: list[tuple[str, ...]] = [("TYPE", "RUNNING", *_HEADERS, "CHANGED")]
    for item in answer.policies:
        changed = f"{item.updated_at:%Y-%m-%d %H:%M} UTC by {item.updated_by}" if item.updated_at else "-"
        rows.append((item.task_type, str(item.running),
                     *(_field(item, name, answer.defaults) for name in _COLUMNS), changed))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


def _value(option: str, text: str | None, kind: type[int] | type[float]) -> int | float | None:
    """An option's number, None for none/default; a usage error (exit 2) for anything else."""
    if text is None or text.lower() in _CLEARED:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number of seconds"
        raise typer.BadParameter(f"{text!r} is not {what} (or none, back to the default)", param_hint=option) from None


@policy_app.command("set")
def set_policy(
    task_type: TaskType = typer.Argument(..., help="The task type"),
    max_running: str = typer.Option(None, "--max-running",
                                    help="At most N of the type run at once; none: no limit"),
    retry_delay: str = typer.Option(None, "--retry-delay", help="The first automatic retry's delay in seconds; none: "
                                    "the default"),
    retry_max_delay: str = typer.Option(None, "--retry-max-delay", help="The longest delay between automatic "
                                        "retries in seconds; none: the default"),
    breaker_failures: str = typer.Option(None, "--breaker-failures", help="Failures in a row that pause the type "
                                         "(0: never); none: the default"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's answer"),
) -> None:
    """Change a task type's policy: only the options given change; none puts a field back to its default. A limit
    takes effect at the next claim and stops nothing that runs; raising or clearing it hands out waiting tasks at
    once."""
    given = {"max_running": (max_running, "--max-running", int), "retry_delay_seconds": (retry_delay, "--retry-delay",
             float), "retry_max_delay_seconds": (retry_max_delay, "--retry-max-delay", float),
             "breaker_failures": (breaker_failures, "--breaker-failures", int)}
    chosen = {name: (text, option, kind) for name, (text, option, kind) in given.items() if text is not None}
    if not chosen:
        raise typer.BadParameter("give at least one of --max-running, --retry-delay, --retry-max-delay, "
                                 "--breaker-failures")
    values = {name: _value(option, text, kind) for name, (text, option, kind) in chosen.items()}
    clear = [name for name, value in values.items() if value is None]
    fields = {name: value for name, value in values.items() if value is not None}
    with command_client(get_settings(), names=_NAMES) as client:
        answer = client.set_policy(task_type.value, by=f"cli:{os_user()}", clear=clear, **fields)
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
        return
    shown = ", ".join(f"{name}={_field(answer.policy, name, {})}" for name in POLICY_FIELDS)
    verb = "changed" if answer.changed else "already so, nothing changed"
    typer.echo(f"{task_type.value}: {verb}; now {shown} ({answer.policy.running} running)")
