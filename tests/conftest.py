"""Shared fixtures: store URLs for both backends, a throwaway PostgreSQL server, API processes, supervised pipelines."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from coherence_network.store import TaskStore
from coherence_network.store.db import create_store_engine, migrate
from tests.support.api import ApiProcess, ServedApi
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


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store migrated to head once per session (per xdist worker), copied by ``migrated_store_url``."""
    path = tmp_path_factory.mktemp("sqlite-template") / "coherence.db"
    engine = create_store_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()  # the last connection closing checkpoints the WAL into the file: the file alone is the store
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> str:
    """Each test asking for a store runs on both backends (the test id names it)."""
    return str(request.param)


@pytest.fixture
def store_url(store_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL on each backend (for tests of migration itself)."""
    if store_backend == "sqlite":
        return f"sqlite:///{tmp_path / 'coherence.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_database()
    request.addfinalizer(lambda: server.drop_database(url))
    return url


@pytest.fixture
def migrated_store_url(store_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL on each backend, already at the newest revision: a copy of a store migrated once per
    session, which is what running every migration again would give, for a fraction of the time."""
    if store_backend == "sqlite":
        path = tmp_path / "coherence.db"
        shutil.copy(request.getfixturevalue("migrated_sqlite_template"), path)  # with its mode (owner only)
        return f"sqlite:///{path}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_database(migrated=True)
    request.addfinalizer(lambda: server.drop_database(url))
    return url


@pytest.fixture
def store_engine(migrated_store_url: str) -> Iterator[Engine]:
    """An engine over a fresh store on each backend, migrated to the newest revision."""
    engine = create_store_engine(migrated_store_url)
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
def served_api(tmp_path: Path) -> Iterator[ServedApi]:
    """The API's app served on a thread of this process, on SQLite in a temporary COHERENCE_HOME: for tests of the
    HTTP contract (a process costs ten times the CPU to start; see tests/support/api.py)."""
    api = ServedApi(tmp_path / "home").start()
    yield api
    api.stop()


@pytest.fixture
def pipelines() -> Iterator[list[PipelineProcess]]:
    """Supervised pipelines a test starts (``PipelineProcess.started_in``), each stopped at the end."""
    started: list[PipelineProcess] = []
    yield started
    for pipeline in started:
        pipeline.stop()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: two workers per core. Half the suite's time is waiting (leases running out, outages, processes
    starting and stopping): with one worker per core the cores sat idle half the time (530 s of CPU in 534 s on 2
    cores). xdist's PYTEST_XDIST_AUTO_NUM_WORKERS still decides when set, and ``-n 2`` as ever."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return 2 * len(os.sched_getaffinity(0))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: takes tens of seconds; handed out first (pytest_collection_modifyitems)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked long go first (the order is otherwise kept): xdist hands tests out in this order, so a long one
    starts while the others still fill the other worker, instead of landing last on one worker while the rest idle."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
