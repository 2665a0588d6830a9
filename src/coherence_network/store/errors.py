"""Errors the store raises; the API maps them to 404 and 409."""


class NotFound(LookupError):
    """No row with that id."""


class Conflict(RuntimeError):
    """The operation is not legal in the row's current state; the message names that state."""

    def __init__(self, message: str, current_status: str | None = None) -> None:
        super().__init__(message)
        self.current_status = current_status
