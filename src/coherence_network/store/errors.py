"""Errors the store raises: NotFound and Conflict (the API's 404 and 409), and StoreError, a statement the store or
its driver refused or could not run, with whose fault it is (``store_error_status``)."""

from __future__ import annotations

import sqlalchemy as sa

from coherence_network.errors import CoherenceError

StoreError = sa.exc.StatementError


class NotFound(CoherenceError, LookupError):
    """No row with that id."""


class Conflict(CoherenceError, RuntimeError):
    """The operation is not legal in the row's current state; the message names that state."""

    def __init__(self, message: str, current_status: str | None = None) -> None:
        super().__init__(message)
        self.current_status = current_status


def store_error_status(exc: StoreError) -> int:
    """409 for a constraint the request broke, 422 for a value the store or its driver refused, else 503 (the
    store is unavailable: unreachable, locked, corrupt, not migrated)."""
    if isinstance(exc, sa.exc.IntegrityError):
        return 409
    if isinstance(exc, sa.exc.DataError) or not isinstance(exc, sa.exc.DBAPIError):
        return 422  # not a DBAPIError: the driver refused to send the value (too large, not encodable...)
    return 503


def store_error_cause(exc: StoreError) -> str:
    """The first line of what the database or driver said."""
    return next(iter(str(exc.orig).strip().splitlines()), "") or type(exc.orig).__name__
