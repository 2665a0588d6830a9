"""Tasks and decisions, through the API: status, tasks, task, logs, decide, retry, create."""

from __future__ import annotations

import json
import sys
import time
from functools import partial

import click
import typer

from coherence_network.cli.api_access import colour_on, command_client, os_user
from coherence_network.cli.app import app
from coherence_network.clock import utcnow
from coherence_network.contract import SORT_COLUMNS, TaskStatus, TaskType, parse_sort
from coherence_network.settings import Settings, get_settings


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
    colour = colour_on()
    if watch:
        _watch_status(settings, interval, colour)
        return
    with command_client(settings) as client:
        if task_id is not None:
            if show_log:
                typer.echo(client.task_log(task_id, tail=lines), nl=False)
                return
            task = client.get_task(task_id)
            shown = render_task(task, colour=colour, stall_warn=settings.coherence_stall_warn_seconds)
            typer.echo(task.model_dump_json(indent=2) if as_json else shown, color=colour)
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
                stamp = utcnow().strftime("%H:%M:%S")
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
    out_of_attempts: bool = typer.Option(False, "--out-of-attempts", help="Only failed tasks whose attempts are "
                                         "spent: nothing retries them but coherence retry ID"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's page {items, total, limit, offset} as JSON"),
) -> None:
    """List tasks, newest first unless --sort says otherwise: id, type, status, age, why the last run failed and
    the start of the direction, then the total (of those matching --search and the filters)."""
    from coherence_network.status_view import render_task_page

    settings = get_settings()
    with command_client(settings) as client:
        page = client.list_tasks(status=status, task_type=task_type, order="newest", limit=limit, offset=offset,
                                 q=search, sort=sort, out_of_attempts=out_of_attempts or None)
    colour = colour_on()
    typer.echo(page.model_dump_json(indent=2) if as_json else render_task_page(page, colour=colour), color=colour)


@app.command()
def task(
    task_id: int = typer.Argument(..., help="The task's id"),
    as_json: bool = typer.Option(False, "--json", help="Print the task as the API returns it"),
) -> None:
    """One task: status, runs (claim token), attempts, exit code, the decision trail (question, answer, who, when)
    and the output tail. Its whole log: coherence logs ID."""
    from coherence_network.status_view import render_task

    settings = get_settings()
    with command_client(settings) as client:
        found = client.get_task(task_id)
    colour = colour_on()
    shown = render_task(found, colour=colour, stall_warn=settings.coherence_stall_warn_seconds)
    typer.echo(found.model_dump_json(indent=2) if as_json else shown, color=colour)


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
            with command_client(settings) as client:
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
    with command_client(settings, conflict=f"task {task_id} does not wait for a decision") as client:
        done = client.decide(task_id, answer, by or f"cli:{os_user()}")
    if as_json:
        typer.echo(done.model_dump_json(indent=2))
        return
    typer.echo(f"task {done.id}: decision {done.decision!r} recorded by {done.decided_by}; now {done.status.value}")


@app.command()
def retry(
    task_id: int = typer.Argument(..., help="A failed or cancelled task (coherence tasks --status failed)"),
    as_json: bool = typer.Option(False, "--json", help="Print the task as it is now"),
) -> None:
    """Send a failed or cancelled task back to pending, to run again. Exit 1 when it is neither."""
    refused = f"task {task_id} cannot be retried (only a failed or cancelled task can)"
    with command_client(get_settings(), conflict=refused) as client:
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
                                       "spec, test, impl, review and heal run the agent (COHERENCE_AGENT)"),
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
    with command_client(settings, conflict="the API refused the create", names=CREATE_OPTIONS) as client:
        made = client.create_task(direction, task_type, idempotency_key=key,
                                  **{name: value for name, value in fields.items() if value is not None})
    if as_json:
        typer.echo(made.model_dump_json(indent=2))
        return
    typer.echo(f"task {made.id}: {made.task_type.value}, {made.status.value}, priority {made.priority} "
               f"(idempotency key {key}: the same create with --idempotency-key {key} returns this task)")

