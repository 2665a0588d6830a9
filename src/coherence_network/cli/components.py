"""The long-running components: runner, project manager (pm), Telegram bot, monitor and the supervisor that runs
them. Each starts through ``startup.run_component``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextlib import ExitStack
from enum import Enum
from functools import partial
from pathlib import Path

import typer

from coherence_network.cli.app import app
from coherence_network.cli.startup import StopHandler, run_component
from coherence_network.contract import Component
from coherence_network.endpoints import COMPONENT_ACTOR
from coherence_network.process_hygiene import protect
from coherence_network.settings import Settings, get_settings


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
    from coherence_network.pidfiles import RUNNERS
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

    def build(_: ExitStack) -> tuple[StopHandler, Callable[[], int]]:
        agent = Runner(settings, workers=workers, interval=interval or DEFAULT_CLAIM_WAIT, once=once,
                       types=type_list, runner_id=runner_id or None, grace=grace)
        return agent.request_stop, agent.run

    run_component("agent_runner", settings, build, verbose=verbose, instance=RUNNERS)


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
    from coherence_network.manager import ManagerOptions, ProjectManager
    from coherence_network.manager_state import default_state_file

    settings = get_settings()
    options = ManagerOptions(
        backlog=(backlog or settings.coherence_workspace / "backlog.md").expanduser().resolve(),
        state_file=state_file or default_state_file(settings), interval=interval, hours=hours, once=once,
        until_done=until_done, parallel=parallel, max_in_flight=max_in_flight, max_iterations=max_iterations,
    )
    if not options.backlog.is_file():
        typer.echo(f"backlog file not found: {options.backlog} (give --backlog or create it)", err=True)
        raise typer.Exit(2)

    def build(stack: ExitStack) -> tuple[StopHandler, Callable[[], int]]:
        client = stack.enter_context(ApiClient(settings=settings, actor=f"{COMPONENT_ACTOR}{Component.MANAGER}"))
        manager = ProjectManager(settings, client, options, fresh=reset)
        if dry_run:
            typer.echo("\n".join(manager.plan()))
            raise typer.Exit(0)
        return manager.request_stop, manager.run

    run_component("project_manager", settings, build, verbose=verbose)



@app.command()
def telegram(
    check_api: bool = typer.Option(False, "--check-api", help="Only check that the API at AGENT_API_BASE answers "
                                   "(exit 0) or not (exit 1), then exit"),
    check_config: bool = typer.Option(False, "--check-config", help="Only check that the bot is configured "
                                      "(TELEGRAM_BOT_TOKEN set: exit 0; else exit 2), then exit"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging"),
) -> None:
    """Telegram bot: commands (/reply, /cancel, /pause, /resume, /status, /tasks, /task, /attention, /help) and
    alerts; long polling, or the API's webhook when TELEGRAM_WEBHOOK_URL is set; logs to var/logs/telegram.log."""
    protect()  # no secret in /proc/<pid>/environ, memory not dumpable (process_hygiene)
    from coherence_network.client import ApiClient, ApiError
    from coherence_network.telegram.bot import Bot

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

    def build(_: ExitStack) -> tuple[StopHandler, Callable[[], int]]:
        bot = Bot(settings)
        return bot.request_stop, bot.run

    run_component("telegram", settings, build, verbose=verbose)


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
    from coherence_network.monitor import Monitor

    settings = get_settings()

    def build(stack: ExitStack) -> tuple[StopHandler, Callable[[], int]]:
        client = stack.enter_context(ApiClient(settings=settings, retries=0))
        watcher = Monitor(settings, client, auto_recover=auto_recover or settings.pipeline_auto_recover)
        return watcher.request_stop, partial(watcher.run, interval or settings.monitor_interval, once)

    run_component("monitor", settings, build, verbose=verbose)


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
    from coherence_network.supervisor import COMPONENTS, Supervisor, SupervisorOptions

    settings = get_settings()
    chosen = [c.strip() for c in components.split(",") if c.strip()]
    unknown = set(chosen) - set(COMPONENTS)
    if unknown or not chosen:
        typer.echo(f"unknown components: {', '.join(sorted(unknown))}; choose from {', '.join(COMPONENTS)}", err=True)
        raise typer.Exit(2)
    committing = _auto_commit_consent(settings, auto_commit)
    settings = settings.model_copy(update={"pipeline_auto_commit": committing})

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

    def build(_: ExitStack) -> tuple[StopHandler, Callable[[], int]]:
        _say_auto_commit(settings, auto_commit)  # once the log is set up: the supervisor's log says it too
        supervisor = Supervisor(settings, options)
        return supervisor.request_stop, supervisor.run

    run_component("supervisor", settings, build, verbose=verbose)


