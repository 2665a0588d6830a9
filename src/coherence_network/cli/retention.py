"""Removing what is old: ``cleanup`` (task logs and prompt files by age, nothing else) and ``prune`` (the retention
settings applied to everything: the store's finished tasks and their files, resolved monitor issues, old runner
rows)."""

from __future__ import annotations

import json

import typer

from coherence_network.cli.api_access import command_client, os_user
from coherence_network.cli.app import app
from coherence_network.settings import get_settings


@app.command()
def cleanup(
    days: float = typer.Option(7.0, "--days", min=0, help="Remove task logs and prompt files not written for this "
                               "many days"),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed, remove nothing"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
) -> None:
    """Free disk now, by age alone: remove this host's task logs (var/logs/task_{id}.log) and prompt files
    (var/run/prompts/prompt_{id}.md) not written for --days days whose task is finished; never those of a running
    task, and nothing in the store (the tasks stay, with their output tail). Item worktrees (var/worktrees/) of
    settled items whose branch is merged and last commit older go too, with the branch; unmerged ones are kept.
    `coherence prune` is the other one: it applies the retention settings (COHERENCE_RETAIN_*) to everything, the
    store's finished tasks included."""
    from dataclasses import asdict

    from coherence_network.client import ApiClient, ApiError
    from coherence_network.file_retention import clean_task_files, task_file_folders
    from coherence_network.gitops import GitError
    from coherence_network.worktree_retention import clean_worktrees

    settings = get_settings()
    try:
        with ApiClient(settings=settings, retries=1, actor=f"cli:{os_user()}") as client:
            report = clean_task_files(task_file_folders(settings), days, client, dry_run=dry_run)
            worktrees = clean_worktrees(settings, client, days, dry_run=dry_run)
    except ApiError as exc:
        typer.echo(f"cannot ask the API which tasks are finished, nothing removed: {exc}; start the API first "
                   "(docs/RUNBOOK.md#api-restart)", err=True)
        raise typer.Exit(1) from exc
    except GitError as exc:
        typer.echo(f"item worktrees: git failed, none removed: {exc}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps({**asdict(report), "dry_run": dry_run, "worktrees": asdict(worktrees)}))
        return
    verb = "would remove" if dry_run else "removed"
    for name in report.removed:
        typer.echo(f"{verb} {name}")
    for name in report.kept_unfinished:
        typer.echo(f"kept {name} (task not finished)")
    typer.echo(f"{verb} {len(report.removed)} task logs and prompt files, {report.bytes_freed} bytes")
    for name in worktrees.removed:
        typer.echo(f"{verb} worktree var/worktrees/{name} and its merged branch")
    for name, why in worktrees.kept.items():
        typer.echo(f"kept worktree var/worktrees/{name}: {why}")


@app.command()
def prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be removed, remove nothing"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
) -> None:
    """Apply retention now (the API, the runner and the monitor also do it every COHERENCE_PRUNE_INTERVAL_SECONDS):
    the API deletes completed and failed tasks older than its COHERENCE_RETAIN_TASKS_DAYS, resolved monitor issues
    older than COHERENCE_RETAIN_RESOLUTIONS_DAYS, audit records older than COHERENCE_RETAIN_AUDIT_DAYS and runner
    rows unseen for COHERENCE_RUNNER_FORGET_SECONDS (only
    the API writes the store); this host's task logs and prompt files of those tasks and its resolutions file go
    here. Exit 2 when the API cannot be reached (nothing is pruned)."""
    from coherence_network.file_retention import prune_task_files, trim_resolutions

    settings = get_settings()
    with command_client(settings) as client:
        rows = client.prune(dry_run=dry_run)
        files = prune_task_files(settings, client, dry_run=dry_run)
    resolutions = trim_resolutions(settings, dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps({
            "dry_run": dry_run, "store": {key: rows[key] for key in ("tasks", "monitor_issues", "runners", "audit")},
            "task_files": {"removed": len(files.removed), "bytes": files.bytes_freed,
                           "kept_unfinished": len(files.kept_unfinished)},
            "resolutions": {"removed": resolutions.removed, "bytes": resolutions.bytes_freed},
        }))
        return
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"store: {verb} {rows['tasks']} finished tasks, {rows['monitor_issues']} resolved monitor issues, "
               f"{rows['runners']} runner rows, {rows['audit']} audit records")
    typer.echo(f"monitor_resolutions.jsonl: {verb} {resolutions.removed} lines, {resolutions.bytes_freed} bytes")
    typer.echo(f"task logs and prompt files: {verb} {len(files.removed)}, {files.bytes_freed} bytes"
               f" ({len(files.kept_unfinished)} kept: task not finished)")

