"""The ``coherence`` command line: every operator command lives here (scripts/ only hand over to it).

Exit codes: 0 healthy / done, 1 needs attention or failed, 2 usage error.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pwd
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click
import typer

from coherence_network.contract import SORT_COLUMNS, TaskStatus, TaskType, parse_sort
from coherence_network.process_hygiene import protect, start_resource_tracker_without_secrets
from coherence_network.settings import ConfigError, Settings, config_errors_as_one_line, get_settings

if TYPE_CHECKING:  # the client pulls in httpx: commands import it when they call the API
    import socket

    import uvicorn
    from fastapi import FastAPI

    from coherence_network.client import ApiClient

HELP_WIDTH = 120
API_SHUTDOWN_SECONDS = 5  # after SIGTERM the API's requests still running get this long before they are cancelled

app = typer.Typer(
    help="Coherence Network: the autonomous pipeline's API, runner, manager, monitor, supervisor and indexers.",
    no_args_is_help=True,
    add_completion=True,  # coherence --install-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode=None,  # plain help: it wraps long defaults instead of cutting them at 80 columns
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": HELP_WIDTH},
)


class Options:
    """Switches given before the command (``coherence --log-json api``)."""

    log_json: bool | None = None


@app.callback()
def global_options(
    log_json: bool = typer.Option(False, "--log-json", help="Write component logs as JSON lines"),
) -> None:
    Options.log_json = True if log_json else None


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


@app.command()
def api(
    host: str = typer.Option(None, "--host", help="Bind address (default COHERENCE_API_HOST, 127.0.0.1)"),
    port: int = typer.Option(None, "--port", help="Port (default COHERENCE_API_PORT, 8000)"),
    workers: int = typer.Option(1, "--workers", min=1, help="uvicorn worker processes"),
    fd: int = typer.Option(None, "--fd", min=0, hidden=True, help="Serve on this inherited listening socket (the "
                           "supervisor holds the port across API restarts) instead of binding --host/--port"),
) -> None:
    """Serve the API with uvicorn. A non-loopback bind is refused unless COHERENCE_API_TOKEN is set; a token shorter
    than 16 characters exits 2. One API per COHERENCE_HOME: a second one exits 1 naming the first
    (var/run/api.lock). SIGTERM answers waiting long-poll claims at once and exits within 5 s."""
    protect()  # no secret in /proc/<pid>/environ, memory not dumpable (process_hygiene)
    import uvicorn

    from coherence_network.api.app import is_loopback
    from coherence_network.logfiles import setup_logging
    from coherence_network.pidfiles import AlreadyRunning, _exit_now, hold, holder

    settings = get_settings()
    if host and host != settings.coherence_api_host:
        # --host is the bind address the API's settings derive from (the Host allow-list, its own address): the
        # worker processes read settings from the environment, so that is where it goes.
        os.environ["COHERENCE_API_HOST"] = host
        get_settings.cache_clear()
        settings = get_settings()
    host = settings.coherence_api_host
    port = port or settings.coherence_api_port
    if not is_loopback(host) and not settings.coherence_api_token:
        typer.echo(
            f"refusing to bind {host}: a non-loopback address needs COHERENCE_API_TOKEN "
            "(see docs/RUNBOOK.md#api-restart)",
            err=True,
        )
        raise typer.Exit(2)
    setup_logging("api", settings, json_lines=Options.log_json)
    if Options.log_json:  # spawned workers (--workers N) read their settings from the environment
        os.environ["COHERENCE_LOG_JSON"] = "true"
    # uvicorn shuts down gracefully, then re-raises the signal to the handler it found: make that one exit cleanly
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_after_shutdown)
    if workers > 1:
        start_resource_tracker_without_secrets()  # the workers' helper process: it lives as long as the API
    wrapped = holder(settings, "api") == os.getpid()  # the supervisor's wrapper holds the lock and exits fast itself
    try:
        with hold(settings, "api"):
            sock = _fail_fast(settings, host, port, fd)
            config = uvicorn.Config("coherence_network.cli:api_worker_app", factory=True, host=host, port=port,
                                    workers=workers, log_config=None, access_log=False,
                                    timeout_graceful_shutdown=API_SHUTDOWN_SECONDS)
            _serve(config, sock)
    except AlreadyRunning as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    except SystemExit as exc:
        if wrapped:
            raise
        _exit_now(exc.code)  # served and stopped, the lock released: no teardown (0.4-0.9 s, pidfiles._exit_now)


def _serve(config: uvicorn.Config, sock: socket.socket | None) -> None:
    """What uvicorn.run does, on the inherited listening socket when there is one (uvicorn's own ``fd`` takes it
    for a Unix socket, which would lose the clients' addresses)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    if config.workers > 1:
        Multiprocess(config, sockets=[sock or config.bind_socket()]).run()
        return
    server = uvicorn.Server(config)
    server.run(sockets=None if sock is None else [sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def api_worker_app() -> FastAPI:
    """uvicorn's app factory. With --workers N each worker is a process spawned afresh that imports only this: it
    starts with no logging, so it sets up api.log the way `coherence api` did before handing over to uvicorn."""
    from coherence_network.api.app import create_app
    from coherence_network.logfiles import setup_logging

    settings = get_settings()
    if multiprocessing.parent_process() is not None:
        protect()  # a spawned worker starts with the secrets in its own environment block
        setup_logging("api", settings)
        logging.getLogger("coherence.api").info("API worker pid %d (parent %d)", os.getpid(), os.getppid())
    return create_app(settings)


def _exit_after_shutdown(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _fail_fast(settings: Settings, host: str, port: int, fd: int | None) -> socket.socket | None:
    """What would make the API useless is said before uvicorn starts, once, in one line (ConfigError): the port is
    taken (and by whom, when it is ours to see), ``fd`` is not a listening TCP socket, or the store cannot be
    reached or migrated. Returns the socket ``fd`` names (None: uvicorn binds host and port itself)."""
    import socket

    from coherence_network.ports import listener
    from coherence_network.store import open_task_store

    sock = None
    if fd is not None:
        try:
            sock = socket.socket(fileno=fd)
            listening = sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError as exc:
            raise ConfigError(f"--fd {fd}: not a socket ({exc.strerror})") from exc
        if not listening or sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ConfigError(f"--fd {fd}: not a listening TCP socket")
        sock.set_inheritable(False)  # nothing the API spawns keeps the port open
        port = sock.getsockname()[1]
    else:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                found = listener(port)
                who = f" by pid {found.pid} ({found.command[:120]})" if found else ""
                raise ConfigError(f"port {port} on {host} is taken{who}: {exc.strerror}; stop it (coherence stop "
                                  f"--port {port}, if it is a stray API of yours) or set COHERENCE_API_PORT") from exc
    store = open_task_store(settings)
    try:
        store.check(upgrade=settings.coherence_auto_migrate)
    finally:
        store.dispose()
    log = logging.getLogger("coherence.api")
    log.info("store %s ready; serving on %s:%d%s", store.dialect, host, port,
             "" if fd is None else f" (the supervisor's socket, fd {fd})")
    return sock


@app.command()
def runner(
    workers: int = typer.Option(1, "--workers", min=1, help="Independent slots: each claims its next task at once"),
    interval: float = typer.Option(None, "--interval", min=0.05, max=60, help="Seconds an idle slot's claim waits "
                                   "on the API for a task (long poll; default 30): a new task starts at once, a stop "
                                   "does not wait for it, and a longer wait costs the database less"),
    once: bool = typer.Option(False, "--once", help="Run what is pending, then exit (1 if any task failed)"),
    types: str = typer.Option("", "--types", help="Only these task types, comma-separated (spec,test,impl,...)"),
    runner_id: str = typer.Option("", "--runner-id", help="Name in the runner registry (default host:pid)"),
    grace: float = typer.Option(None, "--grace", min=0, help="Seconds running tasks get on SIGTERM (default "
                                "COHERENCE_RUNNER_STOP_GRACE_SECONDS)"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging"),
) -> None:
    """Claim tasks from the API and run them; logs to var/logs/agent_runner.log, output to task_{id}.log."""
    protect()  # no secret in /proc/<pid>/environ, memory not dumpable (process_hygiene)
    from coherence_network.logfiles import setup_logging
    from coherence_network.pidfiles import RUNNERS, hold_instance
    from coherence_network.runner import DEFAULT_CLAIM_WAIT, Runner

    settings = get_settings()
    type_list = [t.strip() for t in types.split(",") if t.strip()]
    unknown = set(type_list) - {"spec", "test", "impl", "review", "heal", "run"}
    if unknown:
        typer.echo(f"unknown task types: {', '.join(sorted(unknown))}", err=True)
        raise typer.Exit(2)
    if not settings.coherence_workspace.is_dir():
        typer.echo(f"COHERENCE_WORKSPACE {settings.coherence_workspace} is not a folder", err=True)
        raise typer.Exit(2)
    setup_logging("agent_runner", settings, json_lines=Options.log_json, verbose=verbose)
    agent = Runner(settings, workers=workers, interval=interval or DEFAULT_CLAIM_WAIT, once=once, types=type_list,
                   runner_id=runner_id or None, grace=grace)
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
    with hold_instance(settings, RUNNERS):  # so that `coherence stop` finds it, started by hand or not
        code = agent.run()
    raise typer.Exit(code)


@app.command()
def pm(
    backlog: Path = typer.Option(None, "--backlog", help="Backlog file (default backlog.md in COHERENCE_WORKSPACE)"),
    state_file: Path = typer.Option(
        None, "--state-file", help="State file (default var/logs/project_manager_state.json)"
    ),
    interval: float = typer.Option(5.0, "--interval", min=0.05, help="Seconds between passes"),
    hours: float = typer.Option(0.0, "--hours", min=0, help="Stop after this many hours (0 = run until stopped)"),
    once: bool = typer.Option(False, "--once", help="One pass: create or advance what can be, then exit"),
    until_done: bool = typer.Option(False, "--until-done", help="Exit when every item is settled: 0 all done, 1 any "
                                    "blocked or skipped"),
    parallel: bool = typer.Option(False, "--parallel", help="Keep several items in flight (default one at a time)"),
    max_in_flight: int = typer.Option(3, "--max-in-flight", min=1, help="Items in flight with --parallel"),
    max_iterations: int = typer.Option(3, "--max-iterations", min=1, help="impl -> review rounds before an item "
                                       "whose review keeps failing is blocked"),
    reset: bool = typer.Option(False, "--reset", help="Forget all progress (clears the state file) and start over"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be created; create nothing"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging"),
) -> None:
    """Project manager: backlog items -> spec, test, impl, review tasks (or one `run:` task); logs to
    var/logs/project_manager.log."""
    protect()  # no secret in /proc/<pid>/environ, memory not dumpable (process_hygiene)
    from coherence_network.client import ApiClient
    from coherence_network.logfiles import setup_logging
    from coherence_network.manager import ManagerOptions, ProjectManager, default_state_file

    settings = get_settings()
    options = ManagerOptions(
        backlog=(backlog or settings.coherence_workspace / "backlog.md").expanduser().resolve(),
        state_file=state_file or default_state_file(settings), interval=interval, hours=hours, once=once,
        until_done=until_done, parallel=parallel, max_in_flight=max_in_flight, max_iterations=max_iterations,
    )
    if not options.backlog.is_file():
        typer.echo(f"backlog file not found: {options.backlog} (give --backlog or create it)", err=True)
        raise typer.Exit(2)
    setup_logging("project_manager", settings, json_lines=Options.log_json, verbose=verbose)
    with ApiClient(settings=settings) as client:
        manager = ProjectManager(settings, client, options, fresh=reset)
        if dry_run:
            typer.echo("\n".join(manager.plan()))
            return
        signal.signal(signal.SIGTERM, manager.request_stop)
        signal.signal(signal.SIGINT, manager.request_stop)
        raise typer.Exit(manager.run())


def _colour() -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return sys.stdout.isatty() and not get_settings().no_color


def _user() -> str:
    """The OS user running the command (from the user database, not the environment)."""
    return pwd.getpwuid(os.getuid()).pw_name


@contextmanager
def _api(settings: Settings, *, conflict: str = "refused", names: dict[str, str] | None = None) -> Iterator[ApiClient]:
    """The API client of an operator's command: an API error becomes one line on stderr and exit 1, or 2 when
    nothing could be done (the API calls the request malformed, or it, or its store, cannot be reached: a connection
    error, like a configuration error); ``conflict`` opens the line for a 409, ``names`` spells a 422's fields as the
    command's own options."""
    from coherence_network.client import (
        ApiAuthError,
        ApiClient,
        ApiConflict,
        ApiError,
        ApiNotFound,
        ApiUnavailable,
        ApiValidationError,
    )

    try:
        with ApiClient(settings=settings, retries=1) as client:
            yield client
    except ApiError as exc:
        explained: list[tuple[type[ApiError], str, int]] = [
            (ApiNotFound, f"no such task: {exc.detail}", 1),
            (ApiConflict, f"{conflict}: {exc.detail}", 1),
            (ApiValidationError, f"the API refused the request as malformed: {invalid_fields(exc.detail, names)}", 2),
            (ApiAuthError, f"the API refused the token (set COHERENCE_API_TOKEN): {exc.detail}", 1),
            (ApiUnavailable, (f"the API at {settings.agent_api_base} is unreachable ({exc.detail}): see "
                             "docs/RUNBOOK.md#pipeline-recovery"), 2),
        ]
        message, code = next(((m, c) for kind, m, c in explained if isinstance(exc, kind)), (str(exc), 1))
        typer.echo(message, err=True)
        raise typer.Exit(code) from exc


SHOWN_INPUT_CHARS = 40  # a refused value longer than this is not repeated (a whole direction, a command)


def invalid_fields(detail: object, names: dict[str, str] | None = None) -> str:
    """A 422's ``detail`` (pydantic's list of errors) as one readable line: ``field: message (got value)`` for each,
    joined by ``; ``, a field spelled as ``names`` says (the command's option) else by its name in the request."""
    if not isinstance(detail, list):
        return " ".join(str(detail).split())
    parts = []
    for error in detail:
        if not isinstance(error, dict):
            parts.append(str(error))
            continue
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "path", "query", "header")]
        field = ".".join(loc)
        field = (names or {}).get(field, field)
        given = error.get("input")
        got = (f" (got {given!r})" if isinstance(given, (str, int, float)) and not isinstance(given, bool)
               and len(repr(given)) <= SHOWN_INPUT_CHARS else "")
        message = " ".join(str(error.get("msg", "")).removeprefix("Value error, ").split())
        parts.append(f"{field}: {message}{got}" if field else f"{message}{got}")
    return "; ".join(parts)


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print the API's pipeline-status (or the task) as JSON"),
    task_id: int = typer.Option(None, "--task-id", help="Show one task instead of the pipeline (also: coherence "
                                "task ID)"),
    show_log: bool = typer.Option(False, "--log", help="With --task-id: print the task's log"),
    lines: int = typer.Option(100, "--lines", min=0, help="With --log: last lines shown (0 = all)"),
    watch: bool = typer.Option(False, "--watch", help="Redraw the status until Ctrl-C"),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="With --watch: seconds between redraws"),
) -> None:
    """Pipeline status in layers (goal, orchestration, tasks, attention). Exit 0 healthy (or only warnings: medium
    and low flags), 1 a critical or high flag open, 2 the API or its store unreachable (--watch: 0 on Ctrl-C)."""
    from coherence_network.grading import needs_attention
    from coherence_network.status_view import render_status, render_task

    settings = get_settings()
    colour = _colour()
    if watch:
        _watch_status(settings, interval, colour)
        return
    with _api(settings) as client:
        if task_id is not None:
            if show_log:
                typer.echo(client.task_log(task_id, tail=lines), nl=False)
                return
            task = client.get_task(task_id)
            typer.echo(task.model_dump_json(indent=2) if as_json else render_task(task, colour=colour), color=colour)
            return
        pipeline = client.pipeline_status()
    report = pipeline.model_dump(mode="json")
    typer.echo(json.dumps(report, indent=2) if as_json else render_status(report, colour=colour), color=colour)
    raise typer.Exit(1 if needs_attention(report["attention"]) else 0)  # critical or high: grading.GRADES


def _watch_status(settings: Settings, interval: float, colour: bool) -> None:
    """Redraw the layered status every ``interval`` seconds; an unreachable API is shown, not fatal; Ctrl-C ends
    it cleanly."""
    from coherence_network.client import ApiClient, ApiError
    from coherence_network.status_view import render_status

    try:
        with ApiClient(settings=settings, retries=0) as client:
            while True:
                try:
                    body = render_status(client.pipeline_status().model_dump(mode="json"), colour=colour)
                except ApiError as exc:
                    body = (f"the API at {settings.agent_api_base} is unreachable: {exc.detail}\n"
                            "read docs/RUNBOOK.md#pipeline-recovery")
                click.clear()  # only on a terminal; piped, each redraw follows the last
                stamp = datetime.now(UTC).strftime("%H:%M:%S")
                typer.echo(f"{body}\n\n{stamp} UTC, every {interval:g} s; Ctrl-C to stop\n", color=colour)
                time.sleep(interval)
    except KeyboardInterrupt:
        return


def _sort_option(value: str | None) -> str | None:
    """A usage error (exit 2) for a column the API would refuse, before any request."""
    if value is not None:
        try:
            parse_sort(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


@app.command()
def tasks(
    status: TaskStatus = typer.Option(None, "--status", help="Only tasks in this status"),
    task_type: TaskType = typer.Option(None, "--type", help="Only tasks of this type"),
    limit: int = typer.Option(20, "--limit", min=1, max=500, help="Tasks shown"),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many (in the order shown)"),
    search: str = typer.Option(None, "--search", help="Only tasks whose direction, output or question hold "
                               "every word of TEXT (the last word also as a prefix)", metavar="TEXT"),
    sort: str = typer.Option(None, "--sort", callback=_sort_option, metavar="COLUMN",
                             help=f"Sort by one of {', '.join(SORT_COLUMNS)}; a leading - sorts descending: "
                             "--sort=-priority (with =, or as --sort -priority). Default: newest first"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's page {items, total, limit, offset} as JSON"),
) -> None:
    """List tasks, newest first unless --sort says otherwise: id, type, status, age and the start of the direction,
    then the total (of those matching --search and the filters)."""
    from coherence_network.status_view import render_task_page

    settings = get_settings()
    with _api(settings) as client:
        page = client.list_tasks(status=status, task_type=task_type, order="newest", limit=limit, offset=offset,
                                 q=search, sort=sort)
    colour = _colour()
    typer.echo(page.model_dump_json(indent=2) if as_json else render_task_page(page, colour=colour), color=colour)


@app.command()
def task(
    task_id: int = typer.Argument(..., help="The task's id"),
    as_json: bool = typer.Option(False, "--json", help="Print the task as the API returns it"),
) -> None:
    """One task: status, runs (claim token), attempts, exit code, the decision trail (question, answer, who, when)
    and the output tail. Its whole log: coherence logs ID."""
    from coherence_network.status_view import render_task

    with _api(get_settings()) as client:
        found = client.get_task(task_id)
    colour = _colour()
    typer.echo(found.model_dump_json(indent=2) if as_json else render_task(found, colour=colour), color=colour)


def _log_names() -> list[str]:
    from coherence_network.follow import component_logs

    return sorted(component_logs())


@app.command()
def logs(
    name: str = typer.Argument(..., help="A task id (its log, through the API) or a component: agent_runner, api, "
                               "supervisor, project_manager, monitor, telegram, ...", autocompletion=_log_names),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines: a task's until it is "
                                "settled, a component's (like tail -F, through rotation) until Ctrl-C"),
    lines: int = typer.Option(50, "-n", "--lines", min=0, help="Last lines shown first (0 = all)"),
) -> None:
    """Print a task's log or a component's log under var/logs. Following a task exits 0 when it completed, 1 when
    it failed or waits for a decision."""
    from coherence_network.follow import component_logs, follow_file, follow_task_log, last_lines

    settings = get_settings()
    emit = partial(typer.echo, nl=False)  # click flushes each write: a follower sees lines at once
    try:
        if name.isdigit():
            with _api(settings) as client:
                if not follow:
                    emit(client.task_log(int(name), tail=lines))
                    return
                ended = follow_task_log(client, int(name), lines, emit)
            typer.echo(f"task {ended.id} is {ended.status.value}"
                       + (f" (exit code {ended.exit_code})" if ended.exit_code is not None else ""), err=True)
            raise typer.Exit(0 if ended.status == TaskStatus.COMPLETED else 1)
        known = component_logs()
        if name not in known:
            typer.echo(f"unknown log {name!r}: give a task id or one of {', '.join(sorted(known))}", err=True)
            raise typer.Exit(2)
        path = settings.logs_dir / known[name]
        if follow:
            follow_file(path, lines, emit)
        if not path.is_file():
            typer.echo(f"no log yet at {path} ({name} has not run with COHERENCE_HOME={settings.home})", err=True)
            raise typer.Exit(1)
        emit(last_lines(path.read_text(encoding="utf-8", errors="replace"), lines))
    except KeyboardInterrupt:
        return


@app.command()
def decide(
    task_id: int = typer.Argument(..., help="The task waiting for a decision (coherence tasks --status "
                                  "needs_decision)"),
    answer: str = typer.Argument(..., help="The answer; the task's next run sees it in COHERENCE_DECISION"),
    by: str = typer.Option(None, "--by", help="Who answers, stored as decided_by (default cli:<your OS user>)"),
    as_json: bool = typer.Option(False, "--json", help="Print the task as it is now"),
) -> None:
    """Answer a task's question: it goes back to pending with the answer, who gave it and when. Exit 1 when the
    task does not wait for a decision (the same answer by the same person again is accepted as a repeat)."""
    settings = get_settings()
    with _api(settings, conflict=f"task {task_id} does not wait for a decision") as client:
        done = client.decide(task_id, answer, by or f"cli:{_user()}")
    if as_json:
        typer.echo(done.model_dump_json(indent=2))
        return
    typer.echo(f"task {done.id}: decision {done.decision!r} recorded by {done.decided_by}; now {done.status.value}")


@app.command()
def retry(
    task_id: int = typer.Argument(..., help="A failed task (coherence tasks --status failed)"),
    as_json: bool = typer.Option(False, "--json", help="Print the task as it is now"),
) -> None:
    """Send a failed task back to pending, to run again. Exit 1 when it has not failed."""
    with _api(get_settings(), conflict=f"task {task_id} cannot be retried (only a failed task can)") as client:
        done = client.retry_task(task_id)
    if as_json:
        typer.echo(done.model_dump_json(indent=2))
        return
    typer.echo(f"task {done.id}: now {done.status.value} (attempts so far {done.attempts})")


CREATE_OPTIONS = {"direction": "DIRECTION", "task_type": "--type", "command": "--command", "priority": "--priority",
                  "max_attempts": "--max-attempts", "timeout_seconds": "--timeout"}


@app.command()
def create(
    direction_arg: str = typer.Argument(None, metavar="DIRECTION", help="What to do (1-5000 characters); - reads "
                                        "it from stdin"),
    direction_opt: str = typer.Option(None, "--direction", "-d", help="The same, as an option"),
    task_type: TaskType = typer.Option(TaskType.RUN, "--type", help="Task type: run carries a --command (no agent); "
                                       "spec, test, impl, review and heal run COHERENCE_AGENT_COMMAND"),
    command: str = typer.Option(None, "--command", help="For a run task: the command line a runner executes (split "
                                "like a shell would, never run by one; types allowed: COHERENCE_COMMAND_TASK_TYPES)"),
    priority: int = typer.Option(0, "--priority", help="Higher runs first (-1000..1000)"),
    max_attempts: int = typer.Option(None, "--max-attempts", help="Claims the task may use (default "
                                     "COHERENCE_MAX_ATTEMPTS)"),
    timeout: float = typer.Option(None, "--timeout", help="Seconds it may run (default AGENT_TASK_TIMEOUT)"),
    key: str = typer.Option(None, "--idempotency-key", help="Names this create: repeating it with the same key "
                            "returns the task the first one made (default: a fresh random key, printed)"),
    as_json: bool = typer.Option(False, "--json", help="Print the task as the API returns it"),
) -> None:
    """Create a task through the API (with the token when COHERENCE_API_TOKEN is set). Exit 2 when the input is
    malformed (the API's reason in one line), 1 when the API refuses it otherwise or cannot be reached. A retry
    after a lost answer is safe: give the printed --idempotency-key again."""
    import uuid

    given = [d for d in (direction_arg, direction_opt) if d is not None]
    if len(given) != 1:
        typer.echo("give the direction once: as the argument or with --direction (- reads it from stdin)", err=True)
        raise typer.Exit(2)
    direction = sys.stdin.read().rstrip("\n") if given[0] == "-" else given[0]
    if task_type is TaskType.RUN and not command:
        typer.echo("a run task needs --command (the command line a runner executes); an agent task takes --type "
                   "spec, test, impl, review or heal", err=True)
        raise typer.Exit(2)
    key = key or uuid.uuid4().hex
    fields = {"command": command, "priority": priority, "max_attempts": max_attempts, "timeout_seconds": timeout}
    settings = get_settings()
    with _api(settings, conflict="the API refused the create", names=CREATE_OPTIONS) as client:
        made = client.create_task(direction, task_type, idempotency_key=key,
                                  **{name: value for name, value in fields.items() if value is not None})
    if as_json:
        typer.echo(made.model_dump_json(indent=2))
        return
    typer.echo(f"task {made.id}: {made.task_type.value}, {made.status.value}, priority {made.priority} "
               f"(idempotency key {key}: the same create with --idempotency-key {key} returns this task)")


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
    done = request_restart(settings, component, reason)
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


@app.command()
def cleanup(
    days: float = typer.Option(7.0, "--days", min=0, help="Remove task logs not written for this many days"),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed, remove nothing"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
) -> None:
    """Remove old task logs (var/logs/task_{id}.log) and prompt files (var/run/prompts/prompt_{id}.md) of finished
    tasks; never those of a running task. `coherence prune` applies the retention settings to everything."""
    from dataclasses import asdict

    from coherence_network.cleanup import clean_task_files, task_file_folders
    from coherence_network.client import ApiClient, ApiError

    settings = get_settings()
    try:
        with ApiClient(settings=settings, retries=1) as client:
            report = clean_task_files(task_file_folders(settings), days, client, dry_run=dry_run)
    except ApiError as exc:
        typer.echo(f"cannot ask the API which tasks are finished, nothing removed: {exc}; start the API first "
                   "(docs/RUNBOOK.md#api-restart)", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps({**asdict(report), "dry_run": dry_run}))
        return
    verb = "would remove" if dry_run else "removed"
    for name in report.removed:
        typer.echo(f"{verb} {name}")
    for name in report.kept_unfinished:
        typer.echo(f"kept {name} (task not finished)")
    typer.echo(f"{verb} {len(report.removed)} task logs and prompt files, {report.bytes_freed} bytes")


@app.command()
def prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be removed, remove nothing"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
) -> None:
    """Apply retention now (the API, the runner and the monitor also do it every COHERENCE_PRUNE_INTERVAL_SECONDS):
    the API deletes completed and failed tasks older than its COHERENCE_RETAIN_TASKS_DAYS, resolved monitor issues
    older than COHERENCE_RETAIN_RESOLUTIONS_DAYS and runner rows unseen for COHERENCE_RUNNER_FORGET_SECONDS (only
    the API writes the store); this host's task logs and prompt files of those tasks and its resolutions file go
    here. Exit 2 when the API cannot be reached (nothing is pruned)."""
    from coherence_network.cleanup import prune_task_files, trim_resolutions

    settings = get_settings()
    with _api(settings) as client:
        rows = client.prune(dry_run=dry_run)
        files = prune_task_files(settings, client, dry_run=dry_run)
    resolutions = trim_resolutions(settings, dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps({
            "dry_run": dry_run, "store": {key: rows[key] for key in ("tasks", "monitor_issues", "runners")},
            "task_files": {"removed": len(files.removed), "bytes": files.bytes_freed,
                           "kept_unfinished": len(files.kept_unfinished)},
            "resolutions": {"removed": resolutions.removed, "bytes": resolutions.bytes_freed},
        }))
        return
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"store: {verb} {rows['tasks']} finished tasks, {rows['monitor_issues']} resolved monitor issues, "
               f"{rows['runners']} runner rows")
    typer.echo(f"monitor_resolutions.jsonl: {verb} {resolutions.removed} lines, {resolutions.bytes_freed} bytes")
    typer.echo(f"task logs and prompt files: {verb} {len(files.removed)}, {files.bytes_freed} bytes"
               f" ({len(files.kept_unfinished)} kept: task not finished)")


@app.command()
def telegram(
    check_api: bool = typer.Option(False, "--check-api", help="Only check that the API at AGENT_API_BASE answers "
                                   "(exit 0) or not (exit 1), then exit"),
    check_config: bool = typer.Option(False, "--check-config", help="Only check that the bot is configured "
                                      "(TELEGRAM_BOT_TOKEN set: exit 0; else exit 2), then exit"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging"),
) -> None:
    """Telegram bot: commands (/status, /tasks, /task, /reply, /attention) and alerts; long polling, or the API's
    webhook when TELEGRAM_WEBHOOK_URL is set; logs to var/logs/telegram.log."""
    protect()  # no secret in /proc/<pid>/environ, memory not dumpable (process_hygiene)
    from coherence_network.client import ApiClient, ApiError
    from coherence_network.logfiles import setup_logging
    from coherence_network.telegram import Bot

    settings = get_settings()
    if check_api:
        try:
            with ApiClient(settings=settings, retries=0, timeout=2) as client:
                client.health()
        except ApiError as exc:
            typer.echo(f"the API at {settings.agent_api_base} does not answer: {exc.detail}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"the API at {settings.agent_api_base} answers")
        return
    if not settings.telegram_bot_token:
        typer.echo("TELEGRAM_BOT_TOKEN is not set (get one from @BotFather)", err=True)
        raise typer.Exit(2)
    if check_config:
        typer.echo("the bot is configured (TELEGRAM_BOT_TOKEN is set)")
        return
    setup_logging("telegram", settings, json_lines=Options.log_json, verbose=verbose)
    bot = Bot(settings)
    signal.signal(signal.SIGTERM, bot.request_stop)
    signal.signal(signal.SIGINT, bot.request_stop)
    raise typer.Exit(bot.run())


@app.command()
def monitor(
    once: bool = typer.Option(False, "--once", help="One check, then exit: 0 no issues, 1 issues open"),
    interval: float = typer.Option(None, "--interval", min=0.05, help="Seconds between checks (default "
                                   "MONITOR_INTERVAL)"),
    auto_recover: bool = typer.Option(False, "--auto-recover", help="Request restarts for conditions a restart "
                                      "fixes (also PIPELINE_AUTO_RECOVER=1)"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging"),
) -> None:
    """Evaluate the monitor rules; writes monitor_issues.json, the status report and STATUS lines to
    var/logs/monitor.log, and sends open issues to the API."""
    protect()  # no secret in /proc/<pid>/environ, memory not dumpable (process_hygiene)
    from coherence_network.client import ApiClient
    from coherence_network.logfiles import setup_logging
    from coherence_network.monitor import Monitor

    settings = get_settings()
    setup_logging("monitor", settings, json_lines=Options.log_json, verbose=verbose)
    with ApiClient(settings=settings, retries=0) as client:
        watcher = Monitor(settings, client, auto_recover=auto_recover or settings.pipeline_auto_recover)
        signal.signal(signal.SIGTERM, watcher.request_stop)
        signal.signal(signal.SIGINT, watcher.request_stop)
        raise typer.Exit(watcher.run(interval or settings.monitor_interval, once))


class AutoCommit(str, Enum):
    YES = "yes"
    NO = "no"
    ASK = "ask"


def _auto_commit_consent(settings: Settings, choice: AutoCommit | None) -> bool:
    """Whether the pipeline commits the workspace: ``--auto-commit yes|no``, else PIPELINE_AUTO_COMMIT when it is set
    (or when nothing asks), else the operator's answer on a terminal (default no), else no. git history is the
    operator's: nothing commits to it unless someone said so."""
    if choice is AutoCommit.YES or choice is AutoCommit.NO:
        return choice is AutoCommit.YES
    if choice is None or settings.source_of("pipeline_auto_commit") in ("environment", ".env"):
        return settings.pipeline_auto_commit
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    return typer.confirm(f"Commit the workspace {settings.coherence_workspace.resolve()} after each completed "
                         "spec/test/impl/review task (git commit; PIPELINE_AUTO_COMMIT)?", default=False, err=True)


def _say_auto_commit(settings: Settings, choice: AutoCommit | None) -> None:
    """One line in the supervisor's log (and on its terminal) whenever auto-commit is on, or was asked about."""
    workspace = settings.coherence_workspace.resolve()
    log = logging.getLogger("coherence.supervisor")
    if settings.pipeline_auto_commit:
        log.warning("AUTO-COMMIT IS ON: every completed spec/test/impl/review task is committed in %s%s "
                    "(turn it off: --auto-commit no or PIPELINE_AUTO_COMMIT=0)", workspace,
                    " and pushed" if settings.pipeline_auto_push else "")
    elif choice is AutoCommit.ASK:
        log.warning("auto-commit is off: nothing is committed in %s (turn it on: --auto-commit yes or "
                    "PIPELINE_AUTO_COMMIT=1)", workspace)


@app.command()
def supervise(
    components: str = typer.Option(",".join(("api", "agent_runner", "project_manager", "monitor")), "--components",
                                   help="Components to run, comma-separated"),
    no_restart: bool = typer.Option(False, "--no-restart", help="Run each component once; never restart"),
    backlog: Path = typer.Option(None, "--backlog", help="Backlog for the project manager (default backlog.md in "
                                 "COHERENCE_WORKSPACE; without one the manager is not started)"),
    until_done: bool = typer.Option(False, "--until-done", help="Stop the pipeline when the project manager has "
                                    "settled the backlog; exit with its code"),
    reset: bool = typer.Option(False, "--reset", help="Pass --reset to the project manager's first start (start the "
                               "backlog over; a restarted manager keeps its progress)"),
    parallel: bool = typer.Option(False, "--parallel", help="Pass --parallel to the project manager"),
    pm_arg: list[str] = typer.Option([], "--pm-arg", help="Any further `coherence pm` argument (repeatable)"),
    workers: int = typer.Option(1, "--workers", min=1, help="Runner worker slots"),
    monitor_interval: float = typer.Option(None, "--monitor-interval", min=0.05, help="Seconds between monitor "
                                           "checks (default MONITOR_INTERVAL)"),
    auto_recover: bool = typer.Option(False, "--auto-recover", help="The monitor requests restarts (also "
                                      "PIPELINE_AUTO_RECOVER=1)"),
    auto_commit: AutoCommit = typer.Option(None, "--auto-commit", help="Commit the workspace after each completed "
                                           "spec/test/impl/review task: yes, no, or ask (on a terminal: a question, "
                                           "default no; elsewhere: no). Default PIPELINE_AUTO_COMMIT, which also "
                                           "answers ask when it is set"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging"),
) -> None:
    """Watchdog: start the API, runner, project manager and monitor; restart whatever exits (exit 0 at once, a crash
    after a backoff); hold back alone a component that keeps crashing (a fatal issue, see `coherence fatal`); stop
    all on SIGTERM. One per COHERENCE_HOME (var/run/supervisor.lock): exit 1 when another supervisor runs, 2 when the
    API's port is held by something else."""
    protect()  # no secret in /proc/<pid>/environ, memory not dumpable (process_hygiene)
    from coherence_network.logfiles import setup_logging
    from coherence_network.supervisor import COMPONENTS, Supervisor, SupervisorOptions

    settings = get_settings()
    chosen = [c.strip() for c in components.split(",") if c.strip()]
    unknown = set(chosen) - set(COMPONENTS)
    if unknown or not chosen:
        typer.echo(f"unknown components: {', '.join(sorted(unknown))}; choose from {', '.join(COMPONENTS)}", err=True)
        raise typer.Exit(2)
    committing = _auto_commit_consent(settings, auto_commit)
    settings = settings.model_copy(update={"pipeline_auto_commit": committing})
    setup_logging("supervisor", settings, json_lines=Options.log_json, verbose=verbose)
    _say_auto_commit(settings, auto_commit)
    backlog_file = (backlog or settings.coherence_workspace / "backlog.md").expanduser().resolve()
    if "project_manager" in chosen and backlog is None and not backlog_file.is_file():
        typer.echo(f"no backlog at {backlog_file}: the project manager is not started (give --backlog)", err=True)
        chosen.remove("project_manager")
    pm_args = ["--backlog", str(backlog_file), *pm_arg]
    pm_args += [flag for flag, on in (("--reset", reset), ("--parallel", parallel), ("--until-done", until_done))
                if on]
    monitor_args = ["--interval", str(monitor_interval or settings.monitor_interval)]
    if auto_recover:
        monitor_args.append("--auto-recover")
    options = SupervisorOptions(
        components=tuple(chosen), restart=not no_restart, stop_when_manager_exits=until_done,
        args={"project_manager": pm_args, "agent_runner": ["--workers", str(workers)], "monitor": monitor_args,
              "api": ["--host", settings.coherence_api_host, "--port", str(settings.coherence_api_port)]},
    )
    supervisor = Supervisor(settings, options)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    raise typer.Exit(supervisor.run())


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
    from coherence_network.supervisor import stop_pipeline, stop_port

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
    from coherence_network.client import ApiClient

    settings = get_settings()
    with ApiClient(settings=settings, retries=0, timeout=3) as client:
        if clear:
            cleared, api_error = fatal_issues.clear(settings, client)
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


from coherence_network.indexer.cli import index_app  # noqa: E402  (sub-app registered after the commands above)

app.add_typer(index_app, name="index", help="Index npm or PyPI packages into the dependency graph (--target, --limit).")


def main(argv: list[str] | None = None) -> None:
    """The entry point (console script, ``python -m``, supervised children): a bad setting is one line, exit 2."""
    with config_errors_as_one_line():
        app(argv, prog_name="coherence")


if __name__ == "__main__":
    main()
