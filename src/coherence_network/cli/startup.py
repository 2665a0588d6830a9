"""The start-up every long-running component shares (runner, project manager, Telegram bot, monitor, supervisor).

In one place, so that each starts the same way (after ``process_hygiene.protect()``, the command's first line): its log
under var/logs (JSON lines with ``--log-json``), its instance lock when it takes one, SIGTERM and SIGINT routed to
its ``request_stop``, and its run's result as the exit code. The API is not one of them: uvicorn is its loop and
handles the signals (cli/server.py).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import ExitStack
from typing import NoReturn

import typer

from coherence_network.cli.app import Options
from coherence_network.settings import Settings

StopHandler = Callable[[int, object], None]
# Builds the component once its log is set up: what stops it and what runs it (returning the exit code). It may
# enter contexts (an API client) on the stack, which is closed once the run is over.
Build = Callable[[ExitStack], tuple[StopHandler, Callable[[], int]]]


def run_component(log_name: str, settings: Settings, build: Build, *, verbose: bool = False,
                  instance: str | None = None) -> NoReturn:
    """Set up ``log_name``'s log, take the instance lock of group ``instance`` when given (so that `coherence stop`
    finds it, started by hand or not), build the component, route SIGTERM and SIGINT to it, run it and exit with
    its code. The command calls ``process_hygiene.protect()`` first, before its own checks of its arguments."""
    from coherence_network.logfiles import setup_logging
    from coherence_network.pidfiles import hold_instance

    setup_logging(log_name, settings, json_lines=Options.log_json, verbose=verbose)
    with ExitStack() as stack:
        if instance is not None:
            stack.enter_context(hold_instance(settings, instance))
        request_stop, run = build(stack)
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        code = run()
    raise typer.Exit(code)
