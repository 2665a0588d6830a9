"""``coherence index npm|pypi``: index packages into the dependency graph.

Exit codes: 0 done, 1 some packages failed (a 404 is not a failure) or the run was interrupted, 2 usage error
(no registry configured, a bad --registry, no valid seed).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from coherence_network.settings import Settings, get_settings

if TYPE_CHECKING:  # the crawl pulls in httpx and SQLAlchemy: imported when a command runs, not for every CLI call
    from coherence_network.indexer.crawl import Summary
    from coherence_network.store.graph import GraphStore

index_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        context_settings={"help_option_names": ["-h", "--help"]})
LABELS = {"npm": "npm", "pypi": "PyPI"}


def read_seeds(ecosystem: str, packages: str | None, packages_file: Path | None) -> tuple[list[str], list[str]]:
    """(normalised seeds, rejected names) from --packages / --packages-file, else the shipped list."""
    from coherence_network.indexer.crawl import ADAPTERS

    if packages is None and packages_file is None:
        text = resources.files("coherence_network").joinpath("data", f"seeds_{ecosystem}.txt").read_text("utf-8")
        raw = text.splitlines()
    else:
        raw = (packages or "").split(",")
        if packages_file is not None:
            raw += packages_file.read_text(encoding="utf-8").splitlines()
    names = [line.split("#", 1)[0].strip() for line in raw]
    seeds, rejected = [], []
    for name in filter(None, names):
        normal = ADAPTERS[ecosystem].normalize(name)
        if normal is None:
            rejected.append(name)
        else:
            seeds.append(normal)
    return list(dict.fromkeys(seeds)), rejected


def _open_store(settings: Settings) -> GraphStore:
    """The graph store on the configured database, its schema brought up to date (or exit 1 when it may not)."""
    from coherence_network.store import open_task_store

    store = open_task_store(settings)
    if settings.coherence_auto_migrate:
        store.migrate()
    elif not store.at_head():
        store.dispose()
        typer.echo("the store's schema is not current and COHERENCE_AUTO_MIGRATE is off: run `coherence migrate`",
                   err=True)
        raise typer.Exit(1)
    return store.graph()


def _progress_bar(total: int, label: str, by_projects: bool) -> tuple[Callable[[Summary], None], Callable[[], None]]:
    """A rich progress bar on a terminal (plain lines go to the log either way): (update, close)."""
    if not sys.stderr.isatty():
        return (lambda _: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.description}"), console=Console(stderr=True))
    task = progress.add_task("", total=total)
    progress.start()

    def update(s: Summary) -> None:
        progress.update(task, completed=s.projects if by_projects else s.fetched + s.skipped,
                        description=f"{s.indexed} ok, {s.missing} missing, {s.failed} failed, {s.skipped} skipped")

    return update, progress.stop


def _print_summary(s: Summary, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(s.as_dict(), indent=2))
        return
    typer.echo(f"{LABELS[s.ecosystem]} from {s.registry} ({s.registry_source})")
    typer.echo(f"  indexed {s.indexed}, missing {s.missing}, failed {s.failed}, skipped (fresh) {s.skipped}")
    typer.echo(f"  {s.seconds:.1f} s, {s.packages_per_second:.1f} packages/s; {s.projects} projects stored, "
               f"{s.queued} queued for later runs" + ("; INTERRUPTED" if s.interrupted else ""))
    if s.target and s.projects < s.target and not s.queued and not s.interrupted:
        typer.echo(f"  target {s.target} not reached: everything reachable from the seeds is indexed; "
                   "give more seeds (--packages, --packages-file) to grow further")
    for failure in s.failures:
        typer.echo(f"  failed: {failure['name']}: {failure['reason']}")
    if s.failed > len(s.failures):
        typer.echo(f"  ... and {s.failed - len(s.failures)} more failures (see var/logs/indexer.log)")


def _command(ecosystem: str) -> Callable[..., None]:
    label = LABELS[ecosystem]

    def command(
        ctx: typer.Context,
        target: int | None = typer.Option(
            None, "--target", min=1, metavar="N",
            help=f"Grow breadth-first through discovered dependencies until {label} holds N indexed projects"),
        limit: int | None = typer.Option(None, "--limit", min=1, metavar="N",
                                         help="Fetch at most N packages in this run"),
        packages: str | None = typer.Option(None, "--packages", metavar="a,b,c",
                                            help="Seed packages (default: the shipped list of widely used ones)"),
        packages_file: Path | None = typer.Option(None, "--packages-file", exists=True, dir_okay=False,
                                                  help="Seed packages, one per line ('#' starts a comment)"),
        concurrency: int | None = typer.Option(None, "--concurrency", min=1, max=256,
                                               help="Requests in flight (default COHERENCE_INDEX_CONCURRENCY, 16)"),
        registry: str | None = typer.Option(
            None, "--registry", metavar="URL",
            help="Registry address instead of the configured one"
                 + (" (the simple index URL)" if ecosystem == "pypi" else "")),
        refresh_days: float | None = typer.Option(
            None, "--refresh-days", min=0,
            help="Fetch again packages indexed longer ago than this (default COHERENCE_INDEX_REFRESH_DAYS, 7)"),
        verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging"),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    ) -> None:
        import asyncio

        from coherence_network.indexer.crawl import Crawler, CrawlOptions
        from coherence_network.indexer.registry import RegistryError, discover
        from coherence_network.logfiles import setup_logging

        settings = get_settings()
        seeds, rejected = read_seeds(ecosystem, packages, packages_file)
        if rejected:
            typer.echo(f"ignoring invalid {label} package names: {', '.join(rejected[:20])}", err=True)
        if not seeds:
            typer.echo("no valid seed package given", err=True)
            raise typer.Exit(2)
        try:
            found = discover(ecosystem, registry)
        except RegistryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        log_json = True if ctx.find_root().params.get("log_json") else None
        setup_logging("indexer", settings, json_lines=log_json, verbose=verbose, console=not sys.stderr.isatty())
        logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)
        options = CrawlOptions(
            target=target,
            limit=limit,
            concurrency=concurrency or settings.coherence_index_concurrency,
            refresh_days=settings.coherence_index_refresh_days if refresh_days is None else refresh_days,
            retries=settings.coherence_index_retries,
            backoff_seconds=settings.coherence_index_backoff_seconds,
            timeout=settings.coherence_index_timeout,
        )
        store = _open_store(settings)
        if target is not None:
            update, close = _progress_bar(target, f"{label} projects", by_projects=True)
        else:
            update, close = _progress_bar(min(limit or len(seeds), len(seeds)), f"{label} seeds", by_projects=False)
        try:
            summary = asyncio.run(Crawler(store, found, options, update).run(seeds))
        finally:
            close()
            store.dispose()
        _print_summary(summary, as_json)
        raise typer.Exit(1 if summary.failed or summary.interrupted else 0)

    return command


for _ecosystem, _label in LABELS.items():
    index_app.command(
        _ecosystem,
        help=f"Index {_label} packages and their dependencies into the graph (registry from {_label}'s own "
             "configuration; progress in var/logs/indexer.log). Exit 0 done, 1 some failed, 2 usage error.",
    )(_command(_ecosystem))
