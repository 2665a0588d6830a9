"""What a test needs from the machine: missing in CI is a failure (`.ci/run` installs it), elsewhere a skip."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """Stop this test because ``what`` is missing (say which package brings it): fail under CI, else skip."""
    if IN_CI:
        pytest.fail(what)
    pytest.skip(what)
