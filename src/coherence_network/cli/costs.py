"""Costs and caps, through the API: ``coherence caps`` shows the cost caps in force (task, item, day; US dollars,
0 = none) and ``coherence caps set --day N --item N --task N`` changes them (no restart; the audit trail records
it, actor ``cli:<OS user>``); ``coherence spend`` shows what agents reported using: today against the day cap, per
agent, per day, and per backlog item with ``--item``."""

from __future__ import annotations

import typer

from coherence_network.cli.api_access import command_client, os_user
from coherence_network.cli.app import app
from coherence_network.contract_costs import CostCap, CostCaps
from coherence_network.settings import get_settings

caps_app = typer.Typer(help="Show the cost caps, or change them (caps set --day N --item N --task N).",
                       no_args_is_help=False, invoke_without_command=True)
app.add_typer(caps_app, name="caps")
_NAMES = {"task": "--task", "item": "--item", "day": "--day"}


def usd(value: float) -> str:
    """Dollars as an operator reads them: $1.25, $0.0031."""
    return f"${value:.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def cap_text(value: float) -> str:
    return usd(value) if value > 0 else "no cap"


def _cap_line(name: str, cap: CostCap) -> str:
    if cap.set_at is None:
        return f"{name:5} {cap_text(cap.usd):>10}  (the setting's default)"
    return (f"{name:5} {cap_text(cap.usd):>10}  (set {cap.set_at:%Y-%m-%d %H:%M} UTC by {cap.set_by}; the default "
            f"is {cap_text(cap.default_usd)})")


def _show(caps: CostCaps) -> None:
    for name in ("task", "item", "day"):
        typer.echo(_cap_line(name, getattr(caps, name)))


@caps_app.callback()
def caps(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print the API's answer")) -> None:
    """The cost caps in force: per task run, per backlog item, per UTC day (0 = none), each the operator's or the
    setting's default (COHERENCE_COST_CAP_TASK_USD, _ITEM_USD, _DAY_USD)."""
    if ctx.invoked_subcommand is not None:
        return
    with command_client(get_settings()) as client:
        answer = client.caps()
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
        return
    _show(answer)


@caps_app.command("set")
def set_caps(
    day: float = typer.Option(None, "--day", min=0, help="US dollars per UTC day (0: no cap)"),
    item: float = typer.Option(None, "--item", min=0, help="US dollars per backlog item (0: no cap)"),
    task: float = typer.Option(None, "--task", min=0, help="US dollars per task run (0: no cap)"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's answer"),
) -> None:
    """Change the caps given; the rest stay. Takes effect at once, without a restart: a raised day cap lets waiting
    claims hand out agent tasks again. Recorded in the audit trail."""
    given = {name: value for name, value in (("day", day), ("item", item), ("task", task)) if value is not None}
    if not given:
        raise typer.BadParameter("give at least one of --day, --item, --task")
    with command_client(get_settings(), names=_NAMES) as client:
        answer = client.set_caps(by=f"cli:{os_user()}", **given)
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
        return
    typer.echo("caps changed:" if answer.changed else "already so, nothing changed:")
    _show(answer.caps)


@app.command("spend")
def spend(
    item: str = typer.Option(None, "--item", help="Also one backlog item's spend (its slug) against the item cap"),
    days: int = typer.Option(7, "--days", min=1, max=90, help="How many UTC days back"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's answer"),
) -> None:
    """What agents reported using: today (UTC) against the day cap, per agent, per day. Exit 1 when the day cap (or
    the item's cap) is reached."""
    with command_client(get_settings()) as client:
        answer = client.spend(item=item, days=days)
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
    else:
        today = answer.today
        going = f" (+{usd(today.running_usd)} reported by runs going on)" if today.running_usd else ""
        typer.echo(f"today {today.day} (UTC): {usd(today.cost_usd)}{going} of {cap_text(today.cap_usd)}, "
                   f"{today.runs} runs, {today.tokens_in} tokens in, {today.tokens_out} out"
                   + ("  DAY CAP REACHED: agent tasks wait (coherence caps set --day N)" if today.reached else ""))
        for agent in answer.agents:
            typer.echo(f"  {agent.agent or '(command)':10} {usd(agent.cost_usd):>10}  {agent.runs} runs, "
                       f"{agent.tokens_in} in, {agent.tokens_out} out")
        for day in answer.days:
            typer.echo(f"{day.day}  {usd(day.cost_usd):>10}  {day.runs} runs")
        if answer.item is not None:
            spent = answer.item
            typer.echo(f"item {spent.item}: {usd(spent.cost_usd)} of {cap_text(spent.cap_usd)}, {spent.runs} runs"
                       + ("  ITEM CAP REACHED" if spent.reached else ""))
    if answer.today.reached or (answer.item is not None and answer.item.reached):
        raise typer.Exit(1)
