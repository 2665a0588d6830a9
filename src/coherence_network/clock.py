"""The one clock: every stored or compared time is timezone-aware UTC (DESIGN section 4)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
