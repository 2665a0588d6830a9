"""The API for a test, two ways: as a real process (``coherence api``, ``ApiProcess``) or as the same application
served by uvicorn on a thread of the test process (``ServedApi``). Both listen on an ephemeral loopback port and
answer real HTTP; both keep their files in a COHERENCE_HOME of the test's and write ``logs/api.log`` there.

A process costs about a second of CPU to start (its imports); a served app, about 0.1 s. Use ``ApiProcess`` for what
is about the process (signals, restarts, replicas, exit codes, its memory and files, the command line end to end) and
``ServedApi`` for the HTTP contract and for an API that runners, CLI commands and bots only talk to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import httpx
import uvicorn
from fastapi import FastAPI

from coherence_network.ports import listener
from tests.support.net import free_port, wait_until

QUIET_LOGGERS = ("alembic", "httpx", "httpcore")  # at WARNING in the API's log, as logfiles.setup_logging sets them
# What `coherence api` gets from tests, unless a test says otherwise: the reaper looks often, so leases expire on time,
# and an automatic retry (a lease expiry's too) is due within a fifth of a second.
TEST_ENV = {"COHERENCE_REAP_INTERVAL": "0.2", "COHERENCE_RETRY_DELAY_SECONDS": "0.2"}


class ApiExited(RuntimeError):
    """The API process ended before it answered."""


class ApiProcess:
    def __init__(self, home: Path, *, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.home = home
        self._port_given = port is not None
        self.port = port or free_port()
        self.env = {**os.environ, "COHERENCE_HOME": str(home), **TEST_ENV, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        """This process answers on its port (not another test's API that took the port first)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ApiExited(f"API exited with {self.proc.returncode}; see {self.home / 'logs' / 'api.log'}")
        try:
            if httpx.get(f"{self.url}/api/health", timeout=1).status_code != 200:
                return False
        except httpx.TransportError:
            return False
        found = listener(self.port)
        return found is not None and found.pid == self.proc.pid

    def start(self) -> ApiProcess:
        """Start and wait until it answers. A port another test's server took between ``free_port`` and this bind
        makes the API exit: it starts again on another port (a port the test gave is kept, and the exit raised)."""
        tries = 3
        while True:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coherence_network.cli", "api", "--port", str(self.port)],
                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                wait_until(self._healthy, 30, "API health")
                return self
            except ApiExited:
                tries -= 1
                if self._port_given or not tries or listener(self.port) is None:
                    raise
                self.port = free_port()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class ServedApi:
    """``create_app(settings)`` served by uvicorn on a thread: the settings come from the test process's environment
    and ``env`` (variable names as in ``ApiProcess``), the log goes to ``logs/api.log`` as the process's does.

    Stopping it does what SIGTERM does to the process: waiting long-poll claims are answered at once, then uvicorn
    shuts down. While two are served at once in one process, each one's log also holds the other's lines."""

    def __init__(self, home: Path, *, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.home = home
        self.env = {"COHERENCE_HOME": str(home), **TEST_ENV, **(env or {})}
        self._socket: socket.socket | None = socket.create_server(("127.0.0.1", port or 0))  # no other test takes it
        self.port = int(self._socket.getsockname()[1])
        self.app: FastAPI | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log: logging.Handler | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServedApi:
        """Serve (again, after ``stop``: on the same port and home, as a restarted process would)."""
        from coherence_network.api.app import create_app
        from coherence_network.settings import Settings

        settings = Settings(**{name.lower(): value for name, value in self.env.items()})  # type: ignore[arg-type]
        self.app = app = create_app(settings)  # makes logs/ among the home's folders
        self._start_log(settings.coherence_home / "logs" / "api.log")
        listening = self._socket = self._socket or socket.create_server(("127.0.0.1", self.port))
        config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5)
        self._server = server = uvicorn.Server(config)
        failed: list[BaseException] = []

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[listening])

        def run() -> None:
            try:  # on uvicorn's event loop, as `coherence api` (uvloop: TCP_NODELAY, or each answer waits 40 ms)
                with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
                    runner.run(serve())
            except BaseException as exc:  # said by start below
                failed.append(exc)

        self._thread = threading.Thread(target=run, name=f"api:{self.port}", daemon=True)
        self._thread.start()

        def started() -> bool:
            if failed or not self._thread or not self._thread.is_alive():
                raise RuntimeError(f"the served API stopped before it started: {failed}")
            return bool(server.started)

        try:
            wait_until(started, 30, "API start")
        except BaseException:
            self._thread = None
            self._stop_log()
            raise
        return self

    def stop(self) -> None:
        """What SIGTERM does to ``coherence api``: every waiting claim answered, then a graceful shutdown."""
        if self._thread is None:
            return
        assert self._server is not None and self.app is not None
        work = getattr(self.app.state, "work", None)  # set by the app's lifespan
        if self._loop is not None and work is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(work.close)
        self._server.should_exit = True
        self._thread.join(30)
        assert not self._thread.is_alive(), "the served API did not stop within 30 s"
        self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._stop_log()

    _logging: ClassVar[list[ServedApi]] = []  # those serving now, and the levels from before the first one
    _levels_before: ClassVar[dict[str, int]] = {}

    def _start_log(self, path: Path) -> None:
        """The root logger also to the API's file, at the levels `coherence api` sets (logfiles.setup_logging):
        INFO, with alembic, httpx and httpcore at WARNING. pytest's own handlers stay; the levels are put back once
        the last served API stops. Whatever else this process logs meanwhile (the test's own client) goes there too."""
        if not ServedApi._logging:
            ServedApi._levels_before = {name: logging.getLogger(name).level for name in ("", *QUIET_LOGGERS)}
        ServedApi._logging.append(self)
        self._log = logging.FileHandler(path, encoding="utf-8")
        self._log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._log)
        logging.getLogger().setLevel(logging.INFO)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

    def _stop_log(self) -> None:
        if self._log is None:
            return
        logging.getLogger().removeHandler(self._log)
        self._log.close()
        self._log = None
        ServedApi._logging.remove(self)
        if not ServedApi._logging:
            for name, level in ServedApi._levels_before.items():
                logging.getLogger(name).setLevel(level)
