"""deploy/: the systemd units start commands that exist, the environment example names only real settings, and the
Prometheus alert rules name only metrics a real API's /metrics exports (with labels and values it really uses) and
fire when their condition holds (promtool, when installed)."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from coherence_network import grading, health
from coherence_network.contract import TaskStatus, TaskType
from coherence_network.settings import Settings
from tests.support.api import ServedApi
from tests.support.required import missing

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
ALERTS = DEPLOY / "prometheus" / "coherence-alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "coherence-alerts.test.yml"
ENV_EXAMPLE = DEPLOY / "coherence.env.example"
INSTALLED = "/opt/coherence/.venv/bin/coherence"  # where the units expect the installed command
COHERENCE = Path(sys.executable).parent / "coherence"

# --- PromQL, as much as the rules use: selectors are what is left after groupings, ranges and calls -------------
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, operator, value)]) for every vector selector of a PromQL expression."""
    expr = re.sub(r"\[[^\]]*\]", "", _GROUPING.sub("", expr))
    found = []
    for match in _SELECTOR.finditer(expr):
        name, labels = match.group(1), match.group(2) or ""
        following = expr[match.end():].lstrip()
        if name in _KEYWORDS or (following.startswith("(") and not labels):
            continue  # an operator, or a function / aggregation call
        found.append((name, _MATCHER.findall(labels)))
    return found


def alert_rules() -> list[dict[str, object]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_selector_parser_reads_what_the_rules_use() -> None:
    """The checks below are only as good as this parser: it must find names, labels and skip calls."""
    expr = ('sum(rate(a_total{status="failed"}[1h])) / max by (rule) (b{rule=~"x|y"}) > 0.5 and on() '
            'increase(c[5m]) == 0')
    assert selectors(expr) == [("a_total", [("status", "=", "failed")]), ("b", [("rule", "=~", "x|y")]),
                               ("c", [])]


def scrape(api: ServedApi) -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> values seen, after one task of each finish status the rules count."""
    with httpx.Client(base_url=api.url, timeout=10) as http:
        for status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            http.post("/api/agent/tasks", json={"direction": "d", "task_type": TaskType.RUN, "command": "true"})
            task = http.post("/api/agent/tasks/claim", json={"runner_id": "deploy-test"}).json()
            http.post(f"/api/agent/tasks/{task['id']}/finish",
                      json={"claim_token": task["claim_token"], "status": status}).raise_for_status()
        text = http.get("/metrics").text
    exported: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = exported.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return exported


def test_alert_rules_name_only_exported_metrics(migrated_store_url: str, tmp_path: Path) -> None:
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": migrated_store_url}).start()
    try:
        exported = scrape(api)
    finally:
        api.stop()
    rules = alert_rules()
    assert {"CoherenceNoRunner", "CoherenceQueueStuck", "CoherenceFailureRate"} <= {r["alert"] for r in rules}
    for rule in rules:
        found = selectors(str(rule["expr"]))
        assert found, f"{rule['alert']}: no metric in {rule['expr']!r}"
        for name, matchers in found:
            assert name in exported, f"{rule['alert']}: {name} is not on /metrics"
            for label, operator, value in matchers:
                assert label in exported[name], f"{rule['alert']}: {name} has no label {label}"
                if operator in ("=", "=~"):  # every value a matcher names must be one the API exports
                    for wanted in value.split("|"):
                        assert wanted in exported[name][label], f"{rule['alert']}: {name}{{{label}}} is never {wanted}"


def test_every_monitor_rule_alerts_with_its_severity() -> None:
    """Each health rule (coherence.health.RULES) is in exactly one alert; critical and high rules page."""
    alerted: dict[str, str] = {}
    for rule in alert_rules():
        for name, matchers in selectors(str(rule["expr"])):
            for label, _operator, value in matchers:
                if name == "coherence_health_issues" and label == "rule":
                    for code in value.split("|"):
                        assert code not in alerted, f"health rule {code} is in two alerts"
                        alerted[code] = rule["labels"]["severity"]
    assert set(alerted) == set(health.BY_NAME)
    for code, severity in alerted.items():
        assert severity == ("critical" if grading.grade(health.BY_NAME[code].severity).attention else "warning"), code


def test_alert_rules_fire_when_their_condition_holds() -> None:
    """Prometheus's own checks: the rules parse, and each alert fires (and stays quiet) on the series of
    coherence-alerts.test.yml as expected, annotations rendered."""
    if shutil.which("promtool") is None:
        missing("promtool not installed (apt-get install prometheus)")
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        done = subprocess.run(["promtool", *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False, comment_prefixes=("#", ";"))
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(path)
    return unit


def exec_start(path: Path) -> list[str]:
    argv = shlex.split(read_unit(path)["Service"]["ExecStart"])
    assert argv[0] == INSTALLED, f"{path.name}: ExecStart runs {argv[0]}, not the installed {INSTALLED}"
    return argv[1:]


def test_units_are_the_three_expected() -> None:
    assert [u.name for u in UNITS] == ["coherence-api.service", "coherence-pipeline.service",
                                       "coherence-runner.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_command_exists_and_answers_help(unit: Path) -> None:
    """The command line as written (subcommand and every flag) is accepted: --help exits 0 only if it parses."""
    args = exec_start(unit)
    done = subprocess.run([str(COHERENCE), *args, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"coherence {args[0]}" in done.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_hardening(unit: Path) -> None:
    service = read_unit(unit)["Service"]
    expected = {"NoNewPrivileges": "true", "ProtectSystem": "strict", "Restart": "on-failure",
                "KillMode": "control-group", "EnvironmentFile": "/etc/coherence/coherence.env"}
    assert {key: service.get(key) for key in expected} == expected
    assert service.get("User") and service.get("User") != "root"
    assert "/var/lib/coherence" in service["ReadWritePaths"].split()
    defaults = Settings.model_fields
    grace = {"coherence-runner.service": defaults["coherence_runner_stop_grace_seconds"].default,
             "coherence-pipeline.service": defaults["supervisor_stop_grace_seconds"].default}.get(unit.name, 0)
    assert float(service["TimeoutStopSec"]) > grace, "systemd would SIGKILL before the component's own grace ends"


def env_example() -> dict[str, str]:
    """Every NAME=value line, commented out (optional) or not."""
    pairs = re.findall(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert pairs, "no variables found in the example"
    return dict(pairs)


def test_env_example_names_only_real_settings() -> None:
    known = {name.upper() for name in Settings.model_fields}
    unknown = sorted(set(env_example()) - known)
    assert not unknown, f"not settings (see settings.py): {unknown}"
    assert {"COHERENCE_HOME", "DATABASE_URL", "COHERENCE_API_TOKEN", "AGENT_API_BASE"} <= set(env_example())


def test_env_example_is_valid_settings(tmp_path: Path) -> None:
    """The example with every line switched on, sourced by `sh` as the runbook does (so quoting works there as in
    systemd): every value passes the settings' validation."""
    example = tmp_path / "coherence.env"
    example.write_text(re.sub(r"^#([A-Z][A-Z0-9_]*=)", r"\1", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    settings = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in settings}
    env |= {"EXAMPLE": str(example), "HOME_HERE": str(tmp_path / "var"), "WORKSPACE_HERE": str(tmp_path)}
    script = ('set -a; . "$EXAMPLE"; COHERENCE_HOME=$HOME_HERE; COHERENCE_WORKSPACE=$WORKSPACE_HERE; '
              f'exec {shlex.quote(str(COHERENCE))} config --json')
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    values = {row["name"]: row["value"] for row in json.loads(done.stdout)}
    assert values["COHERENCE_AGENT_COMMAND"] == "claude -p {prompt_file}"
    assert values["COHERENCE_API_HOST"] == env_example()["COHERENCE_API_HOST"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own check of the units (syntax, known keys and values, an executable ExecStart), run on copies
    that point at this checkout's command instead of the installed one."""
    if shutil.which("systemd-analyze") is None:
        missing("systemd-analyze not installed (apt-get install systemd)")
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(COHERENCE)))
    done = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / u.name) for u in UNITS)],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
