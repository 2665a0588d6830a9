"""Drill: the day cap stopped agent work (docs/RUNBOOK.md, Costs and caps), command by command from the runbook: the
operator sees why, reads the spend and the caps, raises the cap, and agent work is handed out again."""

from __future__ import annotations

from pathlib import Path

from coherence_network.client import ApiClient
from coherence_network.contract import TaskStatus
from tests.runbook.drill import Drill
from tests.runbook.runbook_doc import Runbook
from tests.support.api import ApiProcess
from tests.support.net import free_port


def test_drill_the_day_cap_stopped_agent_work_and_is_raised(tmp_path: Path) -> None:
    spend, show, raise_cap = Runbook().drill("caps").commands()
    drill = Drill(tmp_path / "home", free_port())
    api = ApiProcess(drill.home, port=drill.port, env={"COHERENCE_COST_CAP_DAY_USD": "1"}).start()
    try:
        with ApiClient(api.url, token="") as client:
            for n in range(2):
                client.create_task(f"agent work {n}", "impl")
            run = client.claim("drill")
            assert run is not None
            client.finish(run.id, run.claim_token, TaskStatus.COMPLETED, agent="claude", cost_usd=1.5)
            assert client.claim("drill") is None  # the day cap holds the next agent task
            flag = next(f for f in client.pipeline_status().attention if f.rule == "day_cap_reached")
            assert flag.command == "coherence caps set --day 2"
            seen = drill.run(spend, check=False)
            assert seen.returncode == 1 and "$1.50 of $1.00" in seen.stdout and "DAY CAP REACHED" in seen.stdout
            assert "claude" in seen.stdout
            caps = drill.run(show).stdout
            assert "day        $1.00  (the setting's default)" in caps, caps
            raised = drill.run(raise_cap).stdout
            assert raised.startswith("caps changed:") and "day       $20.00" in raised and "task       $1.00" in raised
            following = client.claim("drill")
            assert following is not None and following.direction == "agent work 1"
    finally:
        api.stop()
        drill.close()
