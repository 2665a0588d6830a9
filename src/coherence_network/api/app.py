"""create_app(): the FastAPI application with its store, metrics, request guard and error handling."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from types import FrameType

from fastapi import FastAPI

from coherence_network import __version__
from coherence_network.api import (
    routes_audit,
    routes_bulk,
    routes_claims,
    routes_costs,
    routes_items,
    routes_ops,
    routes_ops_issues,
    routes_pipeline,
    routes_policies,
    routes_projects,
    routes_runners,
    routes_steering,
    routes_tasks,
    routes_telegram,
)
from coherence_network.api.bulk import BulkTokens
from coherence_network.api.docs import install as install_docs
from coherence_network.api.errors import install_error_handlers
from coherence_network.api.guard import RequestGuard
from coherence_network.api.metrics import ApiMetrics, forget_runners_loop
from coherence_network.api.reaper import reaper_loop
from coherence_network.api.signals import WorkSignal
from coherence_network.console.pages import compile_templates
from coherence_network.console.routes import install as install_console
from coherence_network.settings import Settings, get_settings
from coherence_network.store import TaskStore, open_task_store
from coherence_network.store.notify import WorkListener
from coherence_network.store.retention import retention_loop
from coherence_network.versioning import running_version

log = logging.getLogger("coherence.api")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _wake_waiters(store: TaskStore, work: WorkSignal) -> WorkListener | None:
    """Route "a task became claimable" to this process's waiting claims: from the store after its own commits and,
    on PostgreSQL, from the listener for every other replica's (and after each reconnect, for those it missed)."""
    loop = asyncio.get_running_loop()

    def wake_here(wake: Callable[[], None] = work.notify) -> None:
        with suppress(RuntimeError):  # the loop closed: this process is stopping and nobody waits any more
            loop.call_soon_threadsafe(wake)

    def made_elsewhere(sender: str) -> None:
        if sender != store.instance:  # our own writes woke our waiters already
            store.invalidate_counts()
            wake_here()

    def reconnected() -> None:  # notifications sent meanwhile are lost: every waiter looks
        store.invalidate_counts()
        wake_here(work.notify_all)

    store.on_work = wake_here
    return store.work_listener(made_elsewhere, reconnected)


@contextmanager
def _close_on_shutdown_signal(work: WorkSignal) -> Iterator[None]:
    """SIGTERM/SIGINT first answer every waiting long-poll claim (``WorkSignal.close``), then go to the handler that
    was there: uvicorn's, which it installs before the lifespan starts (Server.serve, each worker of --workers N
    included). Without this, shutdown waits for every runner's long poll to run out."""
    if threading.current_thread() is not threading.main_thread():  # served from a thread (tests): no signals here
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def close_then_pass_on(signum: int, frame: FrameType | None) -> None:
        handler = previous[signal.Signals(signum)]
        # uvicorn stops accepting at its next tick, up to 0.1 s later; a connection accepted meanwhile would be
        # closed unanswered at shutdown, while one left in the backlog is answered by the next API (supervised)
        listening = getattr(getattr(handler, "__self__", None), "servers", [])
        with suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(work.close)
            for server in listening:
                loop.call_soon_threadsafe(server.close)
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:  # not served by uvicorn: what the signal would have done
            signal.signal(signum, handler)
            signal.raise_signal(signum)

    for signum in previous:
        signal.signal(signum, close_then_pass_on)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _warm_up(app: FastAPI) -> None:
    """The one-time work of a process's first requests, done in a thread beside the API's start (not before it: every
    start would wait about 0.3 s more) instead of in someone's first page:
    the routes built (FastAPI builds an included router's routes when a request first tries them: about 100 ms for
    the console's), the health snapshot's statements (every status view's reads) compiled by running them once, and
    the console's templates compiled (about 150 ms). What the snapshot counted is forgotten at once, so the first
    page still counts afresh. A store not ready yet is left to the first request."""
    for route in app.router.routes:
        route.matches({"type": "http", "path": "/", "root_path": "", "method": "GET", "headers": []})
    try:
        app.state.metrics.health_snapshot()
    except Exception as exc:  # /api/ready explains a store that cannot answer yet
        log.debug("warm-up read failed: %s", exc)
    app.state.store.invalidate_counts()
    compile_templates()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    store = open_task_store(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running_version()  # pin the version of the code this process started with
        if settings.coherence_auto_migrate:
            try:
                before, after = store.migrate()
                if before != after:
                    log.info("store migrated from %s to %s", before, after)
            except Exception:  # keep serving /api/health; /api/ready explains the problem
                log.exception("store migration failed")
        # beside the start, not before it: what the first console page and readiness check would do once
        warm = asyncio.create_task(asyncio.to_thread(_warm_up, app))
        app.state.work = work = WorkSignal()
        listener = _wake_waiters(store, work)
        reaper = asyncio.create_task(
            reaper_loop(app, settings.coherence_reap_interval, settings.coherence_lease_seconds)
        )
        pruner = asyncio.create_task(retention_loop(store, settings))
        forgetter = asyncio.create_task(forget_runners_loop(app.state.metrics, settings.coherence_reap_interval))
        log.info("API started (version %s, store %s)", __version__, store.dialect)
        try:
            with _close_on_shutdown_signal(work):
                yield
        finally:
            warm.cancel()
            reaper.cancel()
            pruner.cancel()
            forgetter.cancel()
            store.on_work = None
            if listener is not None:
                await asyncio.to_thread(listener.stop)
            store.dispose()

    # /docs is served from the API's own files (api/docs.py): FastAPI's default loads Swagger UI from a CDN
    app = FastAPI(title="Coherence Network API", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.settings = settings
    app.state.store = store
    app.state.graph = store.graph()  # the graph lives in the same database
    app.state.metrics = ApiMetrics(store, settings)
    app.state.started = time.monotonic()
    app.state.log = log
    app.state.bulk_tokens = BulkTokens.for_settings(settings)

    # Host, token and body size are checked before FastAPI reads the body (see guard.py for why not a dependency).
    app.add_middleware(RequestGuard, settings=settings)

    install_error_handlers(app)
    # Routes are matched in order: the runners' calls (claim, finish, heartbeat, create) first (issue 23).
    app.include_router(routes_claims.router)
    app.include_router(routes_tasks.router)
    app.include_router(routes_runners.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_pipeline.router)
    app.include_router(routes_telegram.router)
    app.include_router(routes_ops_issues.router)
    app.include_router(routes_projects.router)
    app.include_router(routes_steering.router)
    app.include_router(routes_bulk.router)
    app.include_router(routes_audit.router)
    app.include_router(routes_policies.router)
    app.include_router(routes_items.router)
    app.include_router(routes_costs.router)
    install_docs(app)  # the reference at /docs, with no file from elsewhere
    install_console(app, settings)  # the ops console's pages at "/"
    return app
