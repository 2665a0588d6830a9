"""The npm and PyPI indexers end to end: real `coherence index` processes against a fixture registry over HTTP,
the graph store on both backends, registry discovery from npm's and pip's configuration, and the read API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from coherence_network.indexer.registry import RegistryError, discover_npm, discover_pypi
from coherence_network.store.db import create_store_engine, migrate
from coherence_network.store.graph import Dependency, GraphStore, PackageRecord
from coherence_network.store.schema import dependencies, index_frontier, projects
from tests.support.api import ServedApi
from tests.support.fixture_registry import FixtureRegistry, npm_name
from tests.support.net import wait_until

ROOT = Path(__file__).resolve().parents[2]
N = 300  # packages in the fixture graph
FAST_RETRIES = {"COHERENCE_INDEX_BACKOFF_SECONDS": "0.01", "COHERENCE_INDEX_RETRIES": "2"}


@pytest.fixture(scope="module")
def registry() -> Iterator[FixtureRegistry]:
    server = FixtureRegistry(N, retry_after="0").start()
    yield server
    server.stop()


@dataclass
class Indexer:
    """`coherence index` as a real process on one store (SQLite in ``home``, or DATABASE_URL)."""

    home: Path
    store_url: str
    registry: FixtureRegistry

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "COHERENCE_HOME": str(self.home), "DATABASE_URL": self.store_url, **FAST_RETRIES}

    def argv(self, ecosystem: str, *args: str) -> list[str]:
        url = self.registry.npm_url if ecosystem == "npm" else self.registry.pypi_index_url
        return [sys.executable, "-m", "coherence_network.cli", "index", ecosystem, "--registry", url, "--json", *args]

    def run(self, ecosystem: str, *args: str, code: int = 0) -> dict:
        done = subprocess.run(self.argv(ecosystem, *args), env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == code, done.stderr[-3000:]
        return json.loads(done.stdout)

    def graph(self) -> GraphStore:
        return GraphStore(create_store_engine(self.store_url))


@pytest.fixture
def indexer(tmp_path: Path, store_url: str, registry: FixtureRegistry) -> Indexer:
    return Indexer(tmp_path / "home", store_url, registry)


def table_counts(graph: GraphStore, ecosystem: str) -> dict[str, int]:
    with graph._engine.connect() as conn:
        def count(query: sa.Select) -> int:
            return int(conn.execute(query).scalar_one())
        return {
            "projects": count(
                sa.select(sa.func.count()).select_from(projects).where(projects.c.ecosystem == ecosystem)
            ),
            "ok": graph.count(ecosystem),
            "edges": count(sa.select(sa.func.count()).select_from(dependencies)
                           .where(dependencies.c.to_ecosystem == ecosystem)),
            "frontier": count(sa.select(sa.func.count()).select_from(index_frontier)
                              .where(index_frontier.c.ecosystem == ecosystem)),
        }


# --- the graph store on both backends ------------------------------------------------------------------------
def test_graph_store_upserts_and_replaces_edges(migrated_store_url: str) -> None:
    engine = create_store_engine(migrated_store_url)
    migrate(engine)
    graph = GraphStore(engine)
    graph.enqueue_seeds("npm", ["a", "b"])
    a = PackageRecord("a", "ok", version="1.0.0", license="MIT", dependencies=[
        Dependency("b", "^1", "runtime"), Dependency("c", "^2", "optional"), Dependency("d", "^3", "dev")])
    graph.save_batch("npm", [(a, 0), (PackageRecord("b", "missing", error="HTTP 404"), 0)])
    graph.save_batch("npm", [(a, 0)])  # the same package again: updated, not duplicated
    assert graph.count("npm") == 1 and graph.count("npm", "missing") == 1
    found = graph.project("npm", "a")
    assert found is not None and found["version"] == "1.0.0"
    assert {(d["name"], d["kind"]) for d in found["dependencies"]} == {("b", "runtime"), ("c", "optional"),
                                                                       ("d", "dev")}
    # dev edges are stored but not followed: only c joins the queue
    assert [e.name for e in graph.frontier_page("npm", 10)] == ["c"]
    graph.save_batch("npm", [(PackageRecord("a", "ok", version="2.0.0", dependencies=[
        Dependency("e", "*", "runtime")]), 0)])
    found = graph.project("npm", "a")
    assert found["version"] == "2.0.0" and [d["name"] for d in found["dependencies"]] == ["e"]
    assert graph.dependents("npm", "e", limit=10, offset=0) == (
        [{"ecosystem": "npm", "name": "a", "version": "2.0.0", "requirement": "*", "kind": "runtime"}], 1)
    assert graph.stats()["npm"]["by_status"] == {"ok": 1, "missing": 1}
    assert graph.stats()["npm"]["edges"] == 1
    engine.dispose()


# --- target, limit, idempotence and resume, both backends ----------------------------------------------------
@pytest.mark.parametrize("ecosystem", ["npm", "pypi"])
def test_target_is_exact_and_grows_breadth_first(indexer: Indexer, ecosystem: str) -> None:
    first = indexer.run(ecosystem, "--packages", "pkg-0", "--target", "50", "--concurrency", "8")
    assert first["projects"] == 50 and first["indexed"] == 50 and first["failed"] == 0
    graph = indexer.graph()
    assert graph.count(ecosystem) == 50
    # breadth-first: the first 13 packages (depths 0..2 of the tree) are all in before anything deeper
    names = {p["name"] for p in graph.search(ecosystem=ecosystem, limit=500, offset=0)[0]}
    first_levels = {(npm_name(i) if ecosystem == "npm" else f"pkg-{i}") for i in range(13)}
    assert first_levels <= names
    second = indexer.run(ecosystem, "--packages", "pkg-0", "--target", "120")
    assert second["projects"] == 120 and graph.count(ecosystem) == 120
    assert second["skipped"] == 1  # the seed is fresh: expanded from the store, not fetched again
    graph.dispose()


def test_limit_is_exact(indexer: Indexer) -> None:
    summary = indexer.run("npm", "--packages", "pkg-0", "--target", "1000", "--limit", "30")
    assert summary["indexed"] + summary["missing"] + summary["failed"] == 30
    graph = indexer.graph()
    assert table_counts(graph, "npm")["projects"] == 30
    again = indexer.run("npm", "--packages", "pkg-0", "--target", "1000", "--limit", "30")
    assert again["indexed"] + again["missing"] == 30 and table_counts(graph, "npm")["projects"] == 60
    graph.dispose()


def test_a_target_beyond_the_reachable_graph_says_so(sqlite_indexer: Indexer) -> None:
    argv = [arg for arg in sqlite_indexer.argv("npm", "--packages", "pkg-299", "--target", "500") if arg != "--json"]
    done = subprocess.run(argv, env=sqlite_indexer.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "target 500 not reached: everything reachable from the seeds is indexed" in done.stdout


def test_indexing_twice_leaves_the_same_graph(indexer: Indexer) -> None:
    full = indexer.run("npm", "--packages", "pkg-0", "--target", "100000")
    assert full["indexed"] == N and full["missing"] == len(indexer.registry.ghosts()) and full["queued"] == 0
    graph = indexer.graph()
    before = table_counts(graph, "npm")
    assert before["edges"] == sum(len(indexer.registry.edges(i)) for i in range(N))
    unchanged = indexer.run("npm", "--packages", "pkg-0", "--target", "100000")
    assert unchanged["indexed"] == 0 and unchanged["skipped"] == 1
    refreshed = indexer.run("npm", "--packages", "pkg-0", "--target", "100000", "--refresh-days", "0")
    assert refreshed["indexed"] == N
    assert table_counts(graph, "npm") == before
    graph.dispose()


def test_a_killed_run_resumes_where_it_stopped(indexer: Indexer) -> None:
    registry = indexer.registry
    registry.reset_counts()
    registry.pause_after(250)  # the registry stops answering mid-run: batches are written, then the kill
    proc = subprocess.Popen(indexer.argv("npm", "--packages", "pkg-0", "--target", "100000", "--concurrency", "8"),
                            env=indexer.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    graph = indexer.graph()
    try:
        wait_until(lambda: _written(graph) >= 200, 60, "the first batches written")
        written = {p["name"] for p in graph.search(ecosystem="npm", limit=500, offset=0)[0]}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        registry.release()
    assert proc.returncode == -signal.SIGKILL
    registry.reset_counts()
    resumed = indexer.run("npm", "--packages", "pkg-0", "--target", "100000")
    assert not written & set(registry.requests), "packages written before the kill were fetched again"
    counts = table_counts(graph, "npm")
    assert graph.count("npm") == N and counts["projects"] == N + len(registry.ghosts())
    assert counts["edges"] == sum(len(registry.edges(i)) for i in range(N))
    assert resumed["queued"] == 0 and resumed["failed"] == 0
    graph.dispose()


def _written(graph: GraphStore) -> int:
    """Projects rows so far; 0 while the indexer has not created the tables yet."""
    try:
        return table_counts(graph, "npm")["projects"]
    except sa.exc.DBAPIError:
        return 0


# --- failures, retries and exit codes (SQLite) ---------------------------------------------------------------
@pytest.fixture
def sqlite_indexer(tmp_path: Path, registry: FixtureRegistry) -> Indexer:
    return Indexer(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'coherence.db'}", registry)


@pytest.mark.parametrize("ecosystem", ["npm", "pypi"])
def test_malformed_and_failing_packages_are_recorded_and_exit_1(sqlite_indexer: Indexer, ecosystem: str) -> None:
    summary = sqlite_indexer.run(ecosystem, "--packages", "bad-root,ghost-1", "--target", "100", code=1)
    reasons = {f["name"]: f["reason"] for f in summary["failures"]}
    assert set(reasons) == {"broken-1", "weird-1", "down-1"}
    assert reasons["broken-1"].startswith("malformed metadata") and reasons["weird-1"].startswith("malformed")
    assert "gave up after 3 attempts: HTTP 500" in reasons["down-1"]
    assert summary["missing"] == 1 and summary["indexed"] == 1
    graph = sqlite_indexer.graph()
    assert graph.project(ecosystem, "down-1")["status"] == "failed"
    assert graph.project(ecosystem, "ghost-1")["status"] == "missing"
    log = (sqlite_indexer.home / "logs" / "indexer.log").read_text()
    assert "broken-1: malformed metadata" in log and f"{ecosystem}: done:" in log
    # failed packages are tried again by the next run; missing ones wait for --refresh-days
    sqlite_indexer.registry.reset_counts()
    sqlite_indexer.run(ecosystem, "--packages", "bad-root", "--target", "100", code=1)
    assert sqlite_indexer.registry.requests["down-1"] == 3 and "ghost-1" not in sqlite_indexer.registry.requests
    graph.dispose()


def test_transient_errors_and_429_are_retried(sqlite_indexer: Indexer) -> None:
    registry = FixtureRegistry(N, retry_after="1").start()
    try:
        sqlite_indexer.registry = registry
        summary = sqlite_indexer.run("npm", "--packages", "pkg-5,pkg-6,pkg-7")
        assert summary["indexed"] == 3 and summary["failed"] == 0
        assert registry.requests["pkg-5"] == 2 and registry.requests["pkg-6"] == 2  # a 500, a 429, then the doc
        assert summary["seconds"] >= 1.0  # Retry-After: 1 was honoured
    finally:
        registry.stop()


def test_bad_registry_and_bad_seeds_are_usage_errors(sqlite_indexer: Indexer) -> None:
    argv = sqlite_indexer.argv("npm", "--packages", "a")
    argv[argv.index("--registry") + 1] = "ftp://127.0.0.1/"
    done = subprocess.run(argv, env=sqlite_indexer.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--registry" in done.stderr
    done = subprocess.run(sqlite_indexer.argv("npm", "--packages", "not a name"), env=sqlite_indexer.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no valid seed" in done.stderr


@pytest.mark.parametrize("script", ["index_npm.py", "index_pypi.py"])
def test_scripts_hand_over_to_the_cli(script: str) -> None:
    done = subprocess.run([str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0 and "--target" in done.stdout and "--limit" in done.stdout


# --- registry discovery ----------------------------------------------------------------------------------------
def _no_npm_env(home: Path) -> dict[str, str]:
    """An environment where npm is not on the PATH (so the npmrc files and variables are read directly)."""
    empty = home / "empty-bin"
    empty.mkdir(parents=True, exist_ok=True)
    return {"PATH": str(empty), "HOME": str(home)}


def test_npm_registry_from_npm_config(tmp_path: Path, registry: FixtureRegistry) -> None:
    if not _has_npm():
        pytest.skip("npm is not installed")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".npmrc").write_text(f"registry={registry.npm_url}\n")
    env = {**os.environ, "HOME": str(home), "npm_config_userconfig": str(home / ".npmrc")}
    env.pop("NPM_CONFIG_REGISTRY", None)
    env.pop("npm_config_registry", None)
    found = discover_npm(env, home)
    assert found.base == registry.npm_url and found.source == "npm config get registry"
    found = discover_npm({**env, "NPM_CONFIG_REGISTRY": registry.url + "other/"}, home)
    assert found.base == registry.url + "other/"


def test_npm_registry_without_npm(tmp_path: Path, registry: FixtureRegistry) -> None:
    env = _no_npm_env(tmp_path)
    with pytest.raises(RegistryError, match="--registry"):
        discover_npm(env, tmp_path)
    assert discover_npm({**env, "NPM_CONFIG_REGISTRY": registry.npm_url}, tmp_path).source == "NPM_CONFIG_REGISTRY"
    (tmp_path / ".npmrc").write_text(f"; comment\nregistry = {registry.npm_url}\n")
    found = discover_npm(env, tmp_path)
    assert found.base == registry.npm_url and found.source.endswith(".npmrc")


def test_pypi_registry_from_pip_config(tmp_path: Path, registry: FixtureRegistry) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = {registry.pypi_index_url}\n")
    found = discover_pypi({"PIP_CONFIG_FILE": str(conf), "XDG_CONFIG_DIRS": str(tmp_path / "none")}, tmp_path)
    assert found.base == registry.url and str(conf) in found.source
    found = discover_pypi({"PIP_INDEX_URL": "http://127.0.0.1:9/mirror/simple"}, tmp_path)
    assert found.base == "http://127.0.0.1:9/mirror/"
    assert discover_pypi({"PIP_CONFIG_FILE": os.devnull}, tmp_path).source == "pip's default index"
    with pytest.raises(RegistryError, match="--registry"):
        discover_pypi({"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}, tmp_path)
    conf.write_text(f"[global]\nindex-url = {registry.pypi_index_url}\nno-index = true\n")
    with pytest.raises(RegistryError, match="no index"):
        discover_pypi({"PIP_CONFIG_FILE": str(conf), "XDG_CONFIG_DIRS": str(tmp_path / "none")}, tmp_path)


def test_the_cli_finds_the_registry_in_the_configuration(sqlite_indexer: Indexer, tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = {sqlite_indexer.registry.pypi_index_url}\n")
    env = {**sqlite_indexer.env, "PIP_CONFIG_FILE": str(conf)}
    env.pop("PIP_INDEX_URL", None)
    argv = [sys.executable, "-m", "coherence_network.cli", "index", "pypi", "--packages", "Pkg_1", "--json"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["indexed"] == 1 and str(conf) in summary["registry_source"]
    done = subprocess.run(argv, env={**env, "PIP_NO_INDEX": "1"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--registry" in done.stderr


def _has_npm() -> bool:
    from shutil import which

    return which("npm") is not None


# --- the read API over HTTP ------------------------------------------------------------------------------------
def test_read_api(sqlite_indexer: Indexer) -> None:
    sqlite_indexer.run("npm", "--packages", "pkg-0", "--target", "100000")
    sqlite_indexer.run("pypi", "--packages", "pkg-0", "--target", "20")
    api = ServedApi(sqlite_indexer.home).start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            one = http.get("/api/projects/npm/pkg-1")
            assert one.status_code == 200
            body = one.json()
            assert body["version"] == "1.2.3" and body["license"] == "MIT" and body["status"] == "ok"
            assert {(d["name"], d["kind"]) for d in body["dependencies"]} == {
                (npm_name(4), "runtime"), (npm_name(5), "runtime"), (npm_name(6), "optional"),
                (npm_name(0), "optional"), ("devtool-1", "dev")}
            for path in ("/api/projects/npm/@fx/pkg-3", "/api/projects/npm/@fx%2Fpkg-3"):
                assert http.get(path).json()["name"] == "@fx/pkg-3"
            dependents = http.get("/api/projects/npm/@fx/pkg-3/dependents").json()
            assert dependents["total"] == 3  # its parent pkg-0, and its children 6 and 7 (cycles)
            assert {d["name"] for d in dependents["items"]} == {"pkg-0", "pkg-6", "pkg-7"}
            assert http.get("/api/projects/pypi/Pkg_1").json()["name"] == "pkg-1"
            assert http.get("/api/projects/npm/no-such-package").status_code == 404
            assert http.get("/api/projects/npm/no-such-package/dependents").status_code == 404
            assert http.get("/api/projects/cargo/serde").status_code == 422
            listed = http.get("/api/projects", params={"q": "PKG-1", "ecosystem": "npm", "limit": 5}).json()
            matching = [npm_name(i) for i in range(N) if "pkg-1" in npm_name(i)]
            assert listed["total"] == len(matching) and len(listed["items"]) == 5
            page2 = http.get("/api/projects", params={"q": "pkg-1", "ecosystem": "npm", "limit": 5, "offset": 5})
            assert not {p["name"] for p in page2.json()["items"]} & {p["name"] for p in listed["items"]}
            assert http.get("/api/projects", params={"ecosystem": "maven"}).status_code == 422
            assert http.get("/api/projects", params={"limit": 0}).status_code == 422
            stats = http.get("/api/graph/stats").json()
            npm_stats = stats["ecosystems"]["npm"]
            assert npm_stats["by_status"] == {"ok": N, "missing": len(sqlite_indexer.registry.ghosts())}
            assert npm_stats["edges"] == sum(len(sqlite_indexer.registry.edges(i)) for i in range(N))
            assert stats["ecosystems"]["pypi"]["by_status"]["ok"] == 20 and npm_stats["last_indexed_at"]
    finally:
        api.stop()


# --- opt-in: the real registries this machine is configured for -----------------------------------------------
@pytest.mark.skipif(os.environ.get("COHERENCE_LIVE_REGISTRY") != "1", reason="set COHERENCE_LIVE_REGISTRY=1")
@pytest.mark.parametrize("ecosystem", ["npm", "pypi"])
def test_live_registry(tmp_path: Path, ecosystem: str) -> None:
    env = {**os.environ, "COHERENCE_HOME": str(tmp_path / "home")}
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "coherence_network.cli", "index", ecosystem, "--target", "20",
                           "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["projects"] >= 20 and summary["indexed"] >= 20 - summary["failed"]
