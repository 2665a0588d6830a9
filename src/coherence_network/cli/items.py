"""``coherence item SLUG`` and ``coherence items``: backlog items through the API, each with its phase tasks, what
they cost, the branch and commits they left, and the decisions along the way."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from coherence_network.cli.api_access import command_client
from coherence_network.cli.app import app
from coherence_network.settings import get_settings

if TYPE_CHECKING:
    from coherence_network.contract_items import ItemPage, ItemView


def _usage(tokens_in: int | None, tokens_out: int | None, cost: float | None) -> str:
    def count(n: int | None) -> str:
        return "-" if n is None else str(n)

    parts = [f"{count(tokens_in)} in / {count(tokens_out)} out tokens" if tokens_in is not None or
             tokens_out is not None else "",
             f"${cost:.4f}" if cost is not None else ""]
    return ", ".join(p for p in parts if p) or "-"


def render_item(item: ItemView) -> str:
    """The item as an operator reads it: what it is, each phase task in order, the commits, the decision trail."""
    lines = [f"item {item.slug}: {item.status.value}", f"title: {item.title or '-'}",
             f"branch: {item.branch or '-'}", f"usage: {_usage(item.tokens_in, item.tokens_out, item.cost_usd)}"]
    if item.merge:
        into = item.merge.get("into", "?")
        lines.append(f"merge: into {into} " + (f"as {item.merge['commit']}" if item.merge.get("commit") else
                                                f"conflict in {', '.join(item.merge.get('conflict') or [])}"))
    lines.append("phases:")
    for task in item.tasks:
        verdict = f" verdict {task.verdict}" if task.verdict else ""
        why = f" ({task.error_category.value}: {task.error_summary or ''})" if task.error_category else ""
        agent = f" {task.agent}{'/' + task.model if task.model else ''}" if task.agent else ""
        used = _usage(task.tokens_in, task.tokens_out, task.cost_usd)
        lines.append(f"  #{task.id} {task.phase or task.task_type.value} round {task.iteration or 0}: "
                     f"{task.status.value}{verdict}{why}{agent}, {used}")
        if task.decision_prompt:
            answer = f"{task.decision} (by {task.decided_by})" if task.decision else "(waiting)"
            lines.append(f"    asked: {task.decision_prompt[:200]} -> {answer}")
    lines += ["commits:"] + [f"  {c.commit[:12]} {c.phase or '-'} (#{c.task_id}): {c.diffstat or ''}"
                             for c in item.commits] if item.commits else ["commits: none"]
    lines += ["decision trail:"] + [f"  {r.at:%Y-%m-%d %H:%M:%S} {r.actor} {r.action} #{r.task_id}"
                                    f"{': ' + r.reason if r.reason else ''}" for r in item.trail] \
        if item.trail else ["decision trail: none"]
    return "\n".join(lines)


def render_items(page: ItemPage) -> str:
    lines = [f"{i.slug}  {i.status.value:<14} {i.phase or '-'} round {i.iteration or 0} (#{i.task_id})  "
             f"{(i.title or '')[:60]}" for i in page.items]
    lines.append(f"{page.offset + 1}-{page.offset + len(page.items)} of {page.total} items" if page.items
                 else f"no items on this page ({page.total} in all)")
    return "\n".join(lines)


@app.command()
def item(
    slug: str = typer.Argument(..., help="The item's slug (coherence items lists them; a phase task's context "
                               "names it)"),
    as_json: bool = typer.Option(False, "--json", help="Print the item as the API returns it"),
) -> None:
    """One backlog item: its phase tasks in order (status, verdict, agent, tokens, cost), its branch, commits and
    merge, and its decision trail. Exit 1 when no task belongs to it."""
    from coherence_network.client import ApiNotFound

    with command_client(get_settings()) as client:
        try:
            found = client.get_item(slug)
        except ApiNotFound:
            typer.echo(f"no such item: {slug}", err=True)
            raise typer.Exit(1) from None
    typer.echo(found.model_dump_json(indent=2) if as_json else render_item(found))


@app.command()
def items(
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="Items shown"),
    offset: int = typer.Option(0, "--offset", min=0, help="Items skipped (the next page)"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's page as JSON"),
) -> None:
    """Backlog items, the one touched last first: slug, its latest task's status, phase and round, its title."""
    with command_client(get_settings()) as client:
        page = client.list_items(limit=limit, offset=offset)
    typer.echo(page.model_dump_json(indent=2) if as_json else render_items(page))
