"""Shared fixtures: store URLs for both backends, a throwaway PostgreSQL server, API processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api import ApiProcess
from tests.support.postgres import PostgresServer, find_bindir

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session. Missing binaries fail in CI and skip elsewhere."""
    if find_bindir() is None:
        message = "PostgreSQL binaries not found (apt-get install postgresql)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'coherence.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[ApiProcess]:
    """A started API on SQLite in a temporary COHERENCE_HOME."""
    api = ApiProcess(tmp_path / "home").start()
    yield api
    api.stop()
