"""The runbook and the code agree: sections, files, endpoints, commands, flags, variables and links."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from functools import cache
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute

from coherence_network.agents import USAGE_LINE
from coherence_network.api.app import create_app
from coherence_network.console.routes import router as console_router
from coherence_network.logfiles import REGISTRY, RUN_FILES
from coherence_network.settings import DERIVED_FROM, Settings
from coherence_network.task_env import CREDENTIAL_MARKERS
from tests.runbook.runbook_doc import ROOT, Runbook
from tests.support.api import ServedApi

SECTIONS = [
    "Log Locations", "API Restart", "Pipeline Recovery", "Autonomous Pipeline", "Pipeline Effectiveness",
    "Key Endpoints", "Indexing", "Check Pipeline Status", "Tests and Cleanup", "Configuration", "Security",
    "Scaling out",
]
# Variables the runbook may name that belong to other programs (npm, pip, the shell, CI, agents), not to Settings.
FOREIGN_VARIABLES = {"PIP_INDEX_URL", "PIP_CONFIG_FILE", "PIP_NO_INDEX", "NPM_CONFIG_REGISTRY",
                     "ANTHROPIC_API_KEY", "GH_TOKEN", "AWS_SECRET_ACCESS_KEY"}
# What the runner hands to each task (the agent protocol), and the protocol's own markers: not settings.
PROTOCOL_NAMES = {"COHERENCE_DECISION", "COHERENCE_TASK_ID", "COHERENCE_TASK_TYPE", "NEEDS_DECISION", USAGE_LINE}
# Settings that exist for tests or internals only need not be in the runbook.
UNDOCUMENTED_SETTINGS: set[str] = set()
DOC_ROUTES = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
VENV_BIN = ROOT / ".venv" / "bin"


@pytest.fixture(scope="module")
def runbook() -> Runbook:
    return Runbook()


def test_every_section_is_there_in_order(runbook: Runbook) -> None:
    present = [s for s in runbook.sections if s in SECTIONS]
    assert present == SECTIONS


def test_readme_links_the_runbook() -> None:
    assert "docs/RUNBOOK.md" in (ROOT / "README.md").read_text()


def test_log_locations_equal_the_registry(runbook: Runbook) -> None:
    documented = {row[0] for row in runbook.table("Log Locations")}
    registered = {f"var/{f.folder}/{f.name}" for f in (*REGISTRY.values(), *RUN_FILES.values())}
    assert documented == registered, (
        f"in the registry, not in the runbook: {sorted(registered - documented)}; "
        f"in the runbook, not in the registry: {sorted(documented - registered)}"
    )
    for row in runbook.table("Log Locations"):
        assert row[1] and row[2], f"{row[0]}: purpose and rotation must be filled in"


def _app_routes() -> dict[str, set[str]]:
    """Every documented route of the app (path -> methods), read from its OpenAPI schema."""
    app = create_app(Settings(coherence_home=Path("/nonexistent-not-started")))
    routes = {_shape(path): {m.upper() for m in ops} for path, ops in app.openapi()["paths"].items()}
    for route in console_router.routes:  # the console's pages: routes too, kept out of the JSON API's schema
        if isinstance(route, APIRoute):
            routes.setdefault(_shape(route.path), set()).update(route.methods)
    return routes


def _shape(path: str) -> str:
    """``/api/agent/tasks/{task_id}`` and ``/api/agent/tasks/{id}`` are the same route."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def _endpoints(runbook: Runbook) -> list[tuple[str, str]]:
    rows = []
    for row in runbook.table("Key Endpoints"):
        method, path = row[0].split(maxsplit=1)
        rows.append((method, path))
    return rows


def test_every_key_endpoint_is_a_route(runbook: Runbook) -> None:
    routes = _app_routes()
    for method, path in _endpoints(runbook):
        for one in method.split("|"):
            assert one in routes.get(_shape(path), set()), f"{one} {path} is in the runbook but not a route of the app"


def test_every_ops_endpoint_is_in_the_table(runbook: Runbook) -> None:
    """Every GET route without path parameters (the ones an operator can call as they are) is documented."""
    documented = {_shape(path) for _, path in _endpoints(runbook)}
    for path, methods in _app_routes().items():
        if "GET" in methods and "{" not in path and path not in DOC_ROUTES:
            assert path in documented, f"GET {path} is a route but missing from the runbook's Key Endpoints"


def test_key_endpoints_answer_on_a_running_api(runbook: Runbook, served_api: ServedApi) -> None:
    with httpx.Client(base_url=served_api.url, timeout=30) as http:
        task = http.post("/api/agent/tasks", json={"direction": "d", "task_type": "run", "command": "true"}).json()
        for method, path in _endpoints(runbook):
            if "GET" not in method.split("|"):
                continue
            url = path.replace("{id}", str(task["id"])).replace("{task_id}", str(task["id"]))
            if "{" in url:
                continue  # needs an object of another kind; the route test above covers it
            response = http.get(url)
            assert response.status_code == 200, f"GET {url} -> {response.status_code}: {response.text[:200]}"


@cache
def _help(program: tuple[str, ...]) -> str:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "COLUMNS": "200", "TERM": "dumb"}
    done = subprocess.run([*program, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 0, f"{' '.join(program)} --help exited {done.returncode}: {done.stderr[-500:]}"
    return done.stdout


def _invocations(runbook: Runbook) -> list[tuple[tuple[str, ...], list[str]]]:
    """(program, flags) for each `scripts/...` or `coherence ...` the runbook's shell blocks run."""
    found = []
    for command in runbook.shell_commands():
        for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", command):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            while words and ("=" in words[0] and not words[0].startswith("-")):
                words = words[1:]  # VAR=value prefixes
            if words and words[0] in ("nohup", "sudo", "exec"):
                words = words[1:]
            if not words:
                continue
            head = words[0].removeprefix("./").removeprefix(".venv/bin/")
            if head.startswith("scripts/"):
                program: tuple[str, ...] = (str(ROOT / head),)
                rest = words[1:]
            elif head == "coherence":
                subcommands = [w for w in words[1:3] if not w.startswith("-")]
                program = ("coherence", *subcommands[:1])
                if subcommands[:1] in (["index"], ["policy"]) and len(subcommands) > 1:  # a sub-app's verb
                    program = ("coherence", *subcommands[:2])
                rest = words[1 + len(program) - 1:]
            else:
                continue
            flags = [w.split("=")[0] for w in rest if w.startswith("-")]
            found.append((program, flags))
    return found


def test_every_named_script_exists_and_is_executable(runbook: Runbook) -> None:
    named = set(re.findall(r"scripts/[\w.-]+", runbook.text))
    assert named, "the runbook names no scripts"
    for script in named:
        path = ROOT / script
        assert path.is_file(), f"{script} is named in the runbook but does not exist"
        assert os.access(path, os.X_OK), f"{script} is not executable"


def test_every_command_answers_help_and_accepts_its_flags(runbook: Runbook) -> None:
    invocations = _invocations(runbook)
    assert invocations
    flags_of: dict[tuple[str, ...], set[str]] = {}
    for program, flags in invocations:  # each program's --help once, however often the runbook runs it
        flags_of.setdefault(program, set()).update(flags)
    for program, flags in flags_of.items():
        text = _help(program)
        for flag in sorted(flags):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"{' '.join(program)} does not accept {flag} (its --help does not list it)")


def test_every_variable_named_is_a_setting_and_every_setting_is_named(runbook: Runbook) -> None:
    settings = {name.upper() for name in Settings.model_fields}
    unknown = runbook.env_vars - settings - FOREIGN_VARIABLES - PROTOCOL_NAMES - set(CREDENTIAL_MARKERS)
    assert not unknown, f"the runbook names variables that Settings does not declare: {sorted(unknown)}"
    missing = settings - runbook.env_vars - UNDOCUMENTED_SETTINGS
    assert not missing, f"settings an operator may set but the runbook does not name: {sorted(missing)}"


def test_every_setting_is_a_row_of_the_configuration_table_with_its_default(runbook: Runbook) -> None:
    """Named somewhere is not enough: an operator looks a variable up in the table."""
    rows = {row[0]: row[1] for row in runbook.table("Configuration")}
    settings = {name.upper(): field.default for name, field in Settings.model_fields.items()}
    missing = set(settings) - set(rows) - UNDOCUMENTED_SETTINGS
    assert not missing, f"settings missing from the runbook's Configuration table: {sorted(missing)}"
    assert not set(rows) - set(settings), f"rows that are no setting: {sorted(set(rows) - set(settings))}"
    written = {name: "(empty)" if default == "" else str(default) for name, default in settings.items()}
    wrong = {name: (shown, written[name]) for name, shown in rows.items()
             if name.lower() not in DERIVED_FROM and shown != written[name]}
    assert not wrong, f"defaults in the table that are not the code's (table, code): {wrong}"


def test_relative_links_and_anchors_resolve(runbook: Runbook) -> None:
    for target in runbook.links:
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        if path:
            resolved = (runbook.path.parent / path).resolve()
            assert resolved.exists(), f"link {target} points at a missing file"
            if anchor and resolved.suffix == ".md":
                assert anchor in Runbook(resolved).anchors, f"link {target}: no such heading"
        elif anchor:
            assert anchor in runbook.anchors, f"anchor #{anchor} does not match a heading"


def test_anchors_the_code_prints_exist(runbook: Runbook) -> None:
    """Error messages and monitor rules point operators at runbook sections; each must exist."""
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    for anchor in set(re.findall(r"RUNBOOK\.md#([\w-]+)", source)):
        assert anchor in runbook.anchors, f"the code points at docs/RUNBOOK.md#{anchor}, which is not a heading"


def test_every_project_file_the_runbook_names_is_shipped(runbook: Runbook) -> None:
    """`--packages-file examples/pypi_seeds.txt` and the like: a newcomer copies the command, so the file must exist."""
    named = set(re.findall(r"(?<![\w./-])((?:examples|scripts|bench|deploy|docs)/[\w./-]*\w)", runbook.text))
    named |= {path for path in re.findall(r"--packages-file[ =]([^\s`<>$]+)", runbook.text)}
    assert named, "the runbook names no project file at all: the pattern is wrong"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"the runbook names files the project does not ship: {missing}"
