#!/usr/bin/env python3
"""Dispatch latency: from a task's creation (its created_at) to its process starting, with an idle runner.

Each task prints its own start time; the runner waits on a long-poll claim. Run by hand:
`.venv/bin/python bench/dispatch.py --tasks 50` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coherence_network.client import ApiClient  # noqa: E402
from tests.support.api import ApiProcess  # noqa: E402
from tests.support.net import wait_until  # noqa: E402
from tests.support.runner import RunnerProcess  # noqa: E402

STAMP = "import datetime; print(datetime.datetime.now(datetime.timezone.utc).isoformat())"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between tasks, so the runner is idle")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coherence-dispatch-") as tmp:
        api = ApiProcess(Path(tmp) / "home", env={"COHERENCE_LOG_LEVEL": "WARNING"}).start()
        runner = RunnerProcess(api.home, api.url).start()
        latencies: list[float] = []
        try:
            with ApiClient(api.url, token="") as client:
                wait_until(lambda: client.get("/api/agent/runners")["items"] != [], 30, "runner registered")
                for _ in range(args.tasks):
                    time.sleep(args.gap)
                    task = client.create_task("stamp", "run", command=f"{sys.executable} -c '{STAMP}'")
                    wait_until(lambda: client.get_task(task["id"])["status"] == "completed", 30, "task done")
                    done = client.get_task(task["id"])
                    started = datetime.fromisoformat(done["output"].strip())
                    created = datetime.fromisoformat(done["created_at"].replace("Z", "+00:00"))
                    latencies.append((started - created).total_seconds())
        finally:
            runner.stop()
            api.stop()
    ordered = sorted(latencies)
    print(json.dumps({
        "tasks": len(latencies),
        "dispatch_p50_ms": round(statistics.median(ordered) * 1000, 1),
        "dispatch_p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
        "dispatch_max_ms": round(ordered[-1] * 1000, 1),
    }))


if __name__ == "__main__":
    main()
