"""Wake-ups across API replicas on PostgreSQL: the store NOTIFYs, each API process LISTENs on one connection.

A write that makes a task claimable sends ``pg_notify(CHANNEL, <store instance>)`` inside its own transaction
(TaskStore._wake), so PostgreSQL delivers it only once the row is committed. ``WorkListener`` keeps one dedicated
connection per process listening on CHANNEL and calls back for each notification; when the connection is lost it
reconnects with backoff, and after each (re)connect it calls back once more, because notifications sent while it
was away are gone. Long polls also recheck the store every COHERENCE_CLAIM_RECHECK_SECONDS, the safety net while
the listener is away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import URL

from coherence_network.outage import Outage

CHANNEL = "coherence_work"
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0  # the longest pause between reconnection attempts while the database is away
_POLL_SECONDS = 0.2  # how often the listening thread looks up from its socket to see whether it should stop (a
# select() timing out in this process, no round trip to the database: it costs the idle store nothing, and an API stops
# within it)

log = logging.getLogger("coherence.api")


def libpq_url(url: URL) -> str:
    """The SQLAlchemy URL as libpq takes it (no ``+psycopg`` driver suffix), password included."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class WorkListener:
    """A thread holding ``LISTEN CHANNEL`` on its own connection (outside the pool; it never runs a transaction).

    ``on_notice(payload)`` runs in this thread for each notification; ``on_connect()`` after every successful
    (re)connection. Both must be quick and thread-safe (e.g. ``loop.call_soon_threadsafe``)."""

    def __init__(
        self,
        url: URL,
        on_notice: Callable[[str], None],
        on_connect: Callable[[], None],
    ) -> None:
        self._conninfo = libpq_url(url)
        self._on_notice = on_notice
        self._on_connect = on_connect
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coherence-listen", daemon=True)

    def start(self) -> WorkListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(_POLL_SECONDS + 5)

    def _run(self) -> None:
        import psycopg  # the PostgreSQL driver is an optional extra; only a PostgreSQL store gets here

        outage = Outage(log, first_delay=FIRST_BACKOFF_SECONDS, max_delay=MAX_BACKOFF_SECONDS)
        while not self._stopping.is_set():
            try:
                # TCP keepalives: a database gone without closing the socket (a cut network) is noticed in ~1 min
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10, keepalives=1,
                                     keepalives_idle=30, keepalives_interval=10, keepalives_count=3) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    outage.recovered("wake-up listener connected again")
                    self._on_connect()
                    while not self._stopping.is_set():
                        for notice in conn.notifies(timeout=_POLL_SECONDS):
                            self._on_notice(notice.payload)
            except psycopg.Error as exc:
                cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                self._stopping.wait(outage.failed(
                    "wake-up listener lost the database: %s (reconnecting with backoff; claims recheck every "
                    "COHERENCE_CLAIM_RECHECK_SECONDS meanwhile)", cause, level=logging.ERROR))
