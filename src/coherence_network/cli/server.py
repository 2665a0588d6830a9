"""``coherence api``: the API served by uvicorn, as the single API of its COHERENCE_HOME, failing fast and in one
line on what would make it useless (a taken port, an unreachable store), and shutting down within a few seconds."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from typing import TYPE_CHECKING

import typer

from coherence_network.cli.app import Options, app
from coherence_network.process_hygiene import protect, start_resource_tracker_without_secrets
from coherence_network.settings import ConfigError, Settings, get_settings

if TYPE_CHECKING:
    import socket

    import uvicorn
    from fastapi import FastAPI

API_SHUTDOWN_SECONDS = 5  # after SIGTERM the API's requests still running get this long before they are cancelled


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
    from coherence_network.logfiles import RotateWhenFull, setup_logging
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
    # With workers, every worker appends to api.log and this process alone rotates it (RotateWhenFull).
    log_path = setup_logging("api", settings, json_lines=Options.log_json, rotate=workers == 1)
    if Options.log_json:  # spawned workers (--workers N) read their settings from the environment
        os.environ["COHERENCE_LOG_JSON"] = "true"
    # uvicorn shuts down gracefully, then re-raises the signal to the handler it found: make that one exit cleanly
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_after_shutdown)
    if workers > 1:
        start_resource_tracker_without_secrets()  # the workers' helper process: it lives as long as the API
        RotateWhenFull(log_path).start()
    wrapped = holder(settings, "api") == os.getpid()  # the supervisor's wrapper holds the lock and exits fast itself
    try:
        with hold(settings, "api"):
            sock = _fail_fast(settings, host, port, fd)
            config = uvicorn.Config("coherence_network.cli.server:api_worker_app", factory=True, host=host, port=port,
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
        setup_logging("api", settings, rotate=False)  # the parent (`coherence api`) alone rotates api.log
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

