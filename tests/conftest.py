"""Shared fixtures: store URLs for both backends, a throwaway PostgreSQL server, API processes, supervised pipelines."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from coherence_network.store.db import create_store_engine, migrate
from coherence_network.store.tasks import TaskStore
from tests.support.api import ApiProcess
from tests.support.pipeline import PipelineProcess
from tests.support.postgres import PostgresServer, find_bindir
from tests.support.required import missing


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session. Missing binaries fail in CI and skip elsewhere."""
    if find_bindir() is None:
        missing("PostgreSQL binaries not found (apt-get install postgresql)")
    # Outside pytest's basetemp: pytest makes that folder private (0700) again whenever another session starts,
    # which would lock the postgres user out of its data folder mid-run.
    root = Path(tempfile.mkdtemp(prefix="coherence-pg-"))
    server = PostgresServer(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'coherence.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def store_engine(store_url: str) -> Iterator[Engine]:
    """An engine over a fresh store on each backend, migrated to the newest revision."""
    engine = create_store_engine(store_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(store_engine: Engine) -> TaskStore:
    """A TaskStore with the default lease and attempts on each backend (a module may ask for other values)."""
    return TaskStore(store_engine)


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[ApiProcess]:
    """A started API on SQLite in a temporary COHERENCE_HOME."""
    api = ApiProcess(tmp_path / "home").start()
    yield api
    api.stop()


@pytest.fixture
def pipelines() -> Iterator[list[PipelineProcess]]:
    """Supervised pipelines a test starts (``PipelineProcess.started_in``), each stopped at the end."""
    started: list[PipelineProcess] = []
    yield started
    for pipeline in started:
        pipeline.stop()
