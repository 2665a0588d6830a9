"""Errors the store raises; the API maps them to 404 and 409."""

from __future__ import annotations

from coherence_network.errors import CoherenceError


class NotFound(CoherenceError, LookupError):
    """No row with that id."""


class Conflict(CoherenceError, RuntimeError):
    """The operation is not legal in the row's current state; the message names that state."""

    def __init__(self, message: str, current_status: str | None = None) -> None:
        super().__init__(message)
        self.current_status = current_status
