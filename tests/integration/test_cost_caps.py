"""The caps end to end over a real API on both stores: with a day cap below what a backlog needs, claims stop
handing out agent tasks at the cap (never more than one task's worth past it) while run tasks still run, every
signal says why, and raising the cap (`coherence caps set`, recorded in the audit trail) wakes a waiting claim; the
item cap stops an item's next phase until it is raised."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import httpx

from coherence_network.client import ApiClient
from coherence_network.contract import Task, TaskStatus, TaskType
from coherence_network.manager import ManagerOptions, ProjectManager
from coherence_network.settings import Settings
from tests.support.api import ServedApi
from tests.support.waiting_claim import WaitingClaim

CLI = [sys.executable, "-m", "coherence_network.cli"]
PER_TASK = 0.4


def _coherence(api: ServedApi, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COHERENCE_HOME": str(api.home), "AGENT_API_BASE": api.url, "COHERENCE_HTTP_TIMEOUT": "5",
           "NO_COLOR": "1"}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def _run_agent_task(client: ApiClient, task: Task) -> None:
    """What a runner's finish of an agent run sends: its usage."""
    client.finish(task.id, task.claim_token, TaskStatus.COMPLETED, output="done\n", agent="custom", model="m1",
                  tokens_in=1000, tokens_out=100, cost_usd=PER_TASK)


def test_the_day_cap_stops_agent_claims_says_why_everywhere_and_a_raise_wakes_a_waiting_claim(
        migrated_store_url: str, tmp_path: Path) -> None:
    api = ServedApi(tmp_path / "home", env={"DATABASE_URL": migrated_store_url, "COHERENCE_COST_CAP_DAY_USD": "1",
                                            "COHERENCE_CLAIM_RECHECK_SECONDS": "60"}).start()
    try:
        client = ApiClient(base_url=api.url, retries=0)
        backlog = [client.create_task(f"agent work {n}", TaskType.IMPL) for n in range(6)]  # $2.40 of work
        runs = [client.create_task(f"command {n}", TaskType.RUN, command="true", priority=-1) for n in range(2)]
        done = 0
        while (task := client.claim("r1", types=[TaskType.IMPL])) is not None:
            _run_agent_task(client, task)
            done += 1
        spend = client.spend()
        assert done == 3 and spend.today.reached and spend.today.cap_usd == 1.0
        assert 1.0 <= spend.today.cost_usd < 1.0 + PER_TASK  # never more than one task's worth past it
        claimed = client.claim_many("r1", 5)  # run tasks still run; no agent task is handed out
        assert {t.id for t in claimed} == {t.id for t in runs}
        assert client.count_tasks().by_status.get(TaskStatus.PENDING) == 3

        status = client.pipeline_status()
        flag = next(f for f in status.attention if f.rule == "day_cap_reached")
        assert flag.severity == "high" and flag.command == "coherence caps set --day 2"
        assert "$1.20 reached the day cap $1.00" in flag.message and "run tasks go on" in flag.message
        shown = _coherence(api, "status")
        assert shown.returncode == 1 and "spend today (UTC): $1.20 of $1.00 day cap, 3 runs REACHED" in shown.stdout
        doctor = _coherence(api, "doctor")
        assert doctor.returncode == 1 and "day_cap_reached: today's agent spend $1.20" in doctor.stdout, doctor.stdout
        spent = _coherence(api, "spend")
        assert spent.returncode == 1 and "DAY CAP REACHED" in spent.stdout and "custom" in spent.stdout
        metrics = httpx.get(f"{api.url}/metrics").text
        for line in ("coherence_day_cap_reached 1.0", "coherence_cost_cap_day_usd 1.0",
                     'coherence_agent_cost_usd_total{agent="custom"} 1.2',
                     'coherence_agent_tokens_total{agent="custom",direction="in"} 3000.0',
                     'coherence_health_issues{rule="day_cap_reached"} 1.0'):
            assert line in metrics, line
        assert "coherence_cost_today_usd 1.2" in metrics
        overview = httpx.get(f"{api.url}/").text  # the console's overview
        assert "$1.20 of the $1.00 day cap" in overview and "Day cap reached" in overview

        waiting = WaitingClaim(client, api, "r2", [TaskType.IMPL]).start()
        raised = _coherence(api, "caps", "set", "--day", "5")
        assert raised.returncode == 0 and "caps changed" in raised.stdout and "$5.00" in raised.stdout, raised.stderr
        got = waiting.result()
        assert got is not None and got.id == backlog[3].id
        assert waiting.waited < 10  # woken by the raise, not by the minute's recheck
        assert client.pipeline_status().spend_today["reached"] is False

        user = pwd.getpwuid(os.getuid()).pw_name
        record = client.audit(action="cap").items[0]
        assert (record.actor, record.channel, record.target, record.status_before, record.status_after) == (
            f"cli:{user}", "cli", "day", "1", "5")
        caps = _coherence(api, "caps")
        assert caps.returncode == 0 and f"by cli:{user}" in caps.stdout and "the default is $1.00" in caps.stdout
        assert _coherence(api, "caps", "set").returncode == 2  # nothing to change
        assert _coherence(api, "caps", "set", "--day", "-1").returncode == 2
        assert httpx.put(f"{api.url}/api/agent/caps", json={"day": "lots"}).status_code == 422
        assert httpx.put(f"{api.url}/api/agent/caps", json={}).status_code == 422
        client.close()
    finally:
        api.stop()


def test_the_item_cap_blocks_the_next_phase_until_it_is_raised(served_api: ServedApi, tmp_path: Path) -> None:
    backlog = tmp_path / "backlog.md"
    backlog.write_text("1. add a login page\n")
    client = ApiClient(base_url=served_api.url, retries=0)
    client.set_caps(by="test:ops", item=0.5)
    settings = Settings(coherence_home=served_api.home, agent_api_base=served_api.url)
    manager = ProjectManager(settings, client, ManagerOptions(backlog=backlog, state_file=tmp_path / "state.json"))
    manager.pass_once()
    spec = client.claim("r1")
    assert spec is not None and spec.task_type == TaskType.SPEC
    client.finish(spec.id, spec.claim_token, TaskStatus.COMPLETED, output="spec written\n", agent="custom",
                  cost_usd=0.6)
    manager.pass_once()
    state = next(iter(manager.state.items.values()))
    assert state.status == "blocked" and state.reason is not None
    assert state.reason.startswith("item cost cap reached: its tasks cost $0.60 of the $0.50 cap")
    assert client.claim("r1") is None  # no next phase was started
    manager.pass_once()
    assert state.status == "blocked"
    client.set_caps(by="test:ops", item=5.0)
    manager.pass_once()
    following = client.claim("r1")
    assert state.status == "in_progress" and following is not None and following.task_type == TaskType.TEST
    assert following.context["item"] == client.get_task(spec.id).item
    client.close()
