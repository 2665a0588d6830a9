"""Setting up, steering and diagnosing the pipeline: version, config, migrate, restart, stop, fatal, doctor."""

from __future__ import annotations

import json

import typer

from coherence_network.cli.app import app
from coherence_network.settings import Settings, get_settings


@app.command()
def version() -> None:
    """Print the package version and the git SHA of the source."""
    from coherence_network.versioning import running_version

    typer.echo(json.dumps(running_version()))


@app.command()
def config(as_json: bool = typer.Option(False, "--json", help="Print as JSON")) -> None:
    """Print every environment variable the project reads: value, default and what it does (secrets and passwords
    inside URLs masked)."""
    rows = get_settings().described()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['name']:<{width}} {r['value']!s:<28} [{r['source']}] {r['description']}")


@app.command()
def migrate() -> None:
    """Upgrade the store's schema to the newest revision (existing data is kept)."""
    from coherence_network.store import open_task_store

    settings = get_settings()
    settings.ensure_dirs()
    store = open_task_store(settings)
    try:
        with store.errors_as_config():
            before, after = store.migrate()
    finally:
        store.dispose()
    typer.echo(f"store {store.dialect}: schema {before or 'empty'} -> {after}")


def _restart_targets() -> list[str]:
    from coherence_network.restart import TARGETS

    return list(TARGETS)


@app.command()
def restart(
    component: str = typer.Argument(..., help="api, agent_runner, project_manager, monitor, or all",
                                    autocompletion=_restart_targets),
    reason: str = typer.Option("operator request", "--reason", help="Why; logged by the supervisor"),
) -> None:
    """Ask the running supervisor to restart one component (or all, the API first): writes
    var/logs/restart_requested.json atomically. Exit 1 when no supervisor runs (nothing would act on it)."""
    from coherence_network.restart import TARGETS, request_restart

    if component not in TARGETS:
        typer.echo(f"unknown component {component!r}: choose from {', '.join(TARGETS)}", err=True)
        raise typer.Exit(2)
    settings = get_settings()
    done = request_restart(settings, component, reason, lambda: _note_restart(settings, component, reason))
    if done.supervisor_pid is None:
        typer.echo(f"no supervisor runs for COHERENCE_HOME={settings.home}: nothing would act on a restart request, "
                   "so none was written. Start the component by hand (docs/RUNBOOK.md#autonomous-pipeline).",
                   err=True)
        raise typer.Exit(1)
    if done.replaced:
        typer.echo(f"replaced a request not acted on yet: {done.replaced.get('component')} "
                   f"({done.replaced.get('reason')})")
    typer.echo(f"restart of {component} requested ({done.path}); the supervisor (pid {done.supervisor_pid or '?'}) "
               "acts on it within a second: see var/logs/supervisor.log")


def _note_restart(settings: Settings, component: str, reason: str) -> None:
    """The restart in the audit trail, through the API, before the request is written (the API may be what
    restarts); the restart never depends on it: an API that cannot be reached is said, not an error."""
    import socket

    from coherence_network.cli.api_access import os_user
    from coherence_network.client import ApiClient, ApiError

    try:
        with ApiClient(settings=settings, retries=0, timeout=3, actor=f"cli:{os_user()}") as client:
            client.note_restart(component, reason, socket.gethostname())
    except ApiError as exc:
        typer.echo(f"not in the audit trail (the API did not take it: {exc.detail}); the restart goes ahead",
                   err=True)


@app.command()
def stop(
    grace: float = typer.Option(None, "--grace", min=0, help="Seconds each process gets after SIGTERM before "
                                "SIGKILL (default SUPERVISOR_STOP_GRACE_SECONDS, the grace the supervisor gives its "
                                "components)"),
    port: int = typer.Option(None, "--port", min=1, max=65535, help="Instead: stop the coherence process of yours "
                             "that listens on this port (a stray API), found by its socket; exit 1 when none is, or "
                             "when the listener is not a coherence process (it is then left alone)"),
) -> None:
    """Stop a running pipeline: every component holding its lock in var/run/ (supervisor first, API last), then any
    task process left behind; removes stale PID files. With --port: only the process listening on that port."""
    from coherence_network.stopping import stop_pipeline, stop_port

    settings = get_settings()
    grace = settings.supervisor_stop_grace_seconds if grace is None else grace
    if port is not None:
        stopped, what = stop_port(port, grace)
        typer.echo(what, err=not stopped)
        raise typer.Exit(0 if stopped else 1)
    done = stop_pipeline(settings, grace)
    typer.echo("\n".join(done) if done else "nothing is running (no component holds its lock in var/run/)")


@app.command()
def fatal(
    clear: bool = typer.Option(False, "--clear", help="Forget the fatal issues (after fixing their cause): here, and "
                               "in the store now or, when the API cannot be reached, once it can; a held-back "
                               "component starts again"),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON"),
) -> None:
    """Fatal issues: components the supervisor could not keep running (held back until cleared). Exit 1 when any,
    0 when none."""
    from coherence_network import fatal as fatal_issues
    from coherence_network.cli.api_access import os_user
    from coherence_network.client import ApiClient

    settings = get_settings()
    actor = f"cli:{os_user()}"
    with ApiClient(settings=settings, retries=0, timeout=3, actor=actor) as client:
        if clear:
            cleared, api_error = fatal_issues.clear(settings, client, actor)
            typer.echo(f"cleared {cleared} local fatal issue(s)" + (
                f"; the store's are cleared when the API can be reached (now: {api_error}): by the supervisor, or "
                "the next coherence fatal" if api_error else " and those stored via the API"))
            raise typer.Exit(0)
        issues, api_error = fatal_issues.gather(settings, client)
    if as_json:
        typer.echo(json.dumps({"fatal_issues": issues, "count": len(issues), "api_error": api_error}, indent=2,
                              default=str))
    elif not issues:
        typer.echo("No fatal issues.")
    else:
        for issue in issues:
            typer.echo(f"{issue.get('at')}  {issue.get('component')}: {issue.get('reason')}")
            typer.echo(f"  recovery tried: {issue.get('recovery_tried') or '-'}")
            for line in str(issue.get("detail") or "").splitlines()[-10:]:
                typer.echo(f"  | {line}")
        typer.echo("Fix the cause (docs/RUNBOOK.md#autonomous-pipeline), then: coherence fatal --clear")
    if api_error and not as_json:
        typer.echo(f"(local file only: {api_error})", err=True)
    raise typer.Exit(1 if issues else 0)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON")) -> None:
    """Is the pipeline effective? [OK] or [ACTION] per check (with the command and runbook section); exit 1 when
    anything needs action."""
    from dataclasses import asdict

    from coherence_network.client import ApiClient
    from coherence_network.doctor import diagnose, render

    settings = get_settings()
    settings.ensure_dirs()
    with ApiClient(settings=settings, retries=0, timeout=5) as client:
        checks, effectiveness = diagnose(settings, client)
    ok = all(c.ok for c in checks)
    if as_json:
        typer.echo(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks], "effectiveness": effectiveness},
                              indent=2, default=str))
    else:
        typer.echo(render(checks, effectiveness))
    raise typer.Exit(0 if ok else 1)

