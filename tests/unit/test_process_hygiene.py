"""A component's secrets leave its /proc/<pid>/environ at start-up, yet what it starts afterwards still gets them.

``protect`` changes the process it runs in, so each check runs it in a fresh Python process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from coherence_network.process_hygiene import secret_names, without_store_secrets

TOKEN = "api-token-0123456789abcdef"
PASSWORD = "db-password-0123456789"
DATABASE_URL = f"postgresql://coherence:{PASSWORD}@127.0.0.1/coherence"
ENV = {"COHERENCE_API_TOKEN": TOKEN, "DATABASE_URL": DATABASE_URL, "LEAKY_HEADER": f"Authorization: Bearer {TOKEN}",
       "REPORTS_DSN": f"postgresql://reports:{PASSWORD}@db/reports", "GH_TOKEN": "gh-token-0123456789",
       "PLAIN_SETTING": "visible-value"}
# Protects itself (twice: the supervised wrapper and the command both do), then reports what /proc shows of it,
# whether it is dumpable, and what a child started afterwards is handed.
COMPONENT = """
import ctypes, json, os, subprocess, sys
from coherence_network.process_hygiene import protect
hidden = protect()
protect()
shown = dict(e.split(b"=", 1) for e in open("/proc/self/environ", "rb").read().split(b"\\0") if b"=" in e)
child = subprocess.run([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
                       capture_output=True, text=True, check=True).stdout
print(json.dumps({"hidden": hidden, "shown": {k.decode(): v.decode() for k, v in shown.items()},
                  "dumpable": ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), "child": json.loads(child),
                  "own": dict(os.environ)}))
"""


def test_secrets_are_blanked_in_proc_environ_and_still_handed_to_children() -> None:
    env = {"PATH": os.environ.get("PATH", ""), **ENV}
    done = subprocess.run([sys.executable, "-c", COMPONENT], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["hidden"] == ["COHERENCE_API_TOKEN", "DATABASE_URL", "GH_TOKEN", "LEAKY_HEADER", "REPORTS_DSN"]
    for name in report["hidden"]:
        assert set(report["shown"][name]) == {"*"} and len(report["shown"][name]) == len(ENV[name])
        assert report["child"][name] == report["own"][name] == ENV[name]
    assert report["shown"]["PLAIN_SETTING"] == "visible-value"
    assert report["dumpable"] == 0


def test_secret_names_follow_the_task_rule() -> None:
    assert secret_names({**ENV, "SHORT": "coherence", "TELEGRAM_WEBHOOK_SECRET": "x"}) == {
        "COHERENCE_API_TOKEN", "DATABASE_URL", "LEAKY_HEADER", "REPORTS_DSN", "GH_TOKEN", "TELEGRAM_WEBHOOK_SECRET"}


def test_components_other_than_the_api_are_handed_no_database_password() -> None:
    assert without_store_secrets(ENV) == {"COHERENCE_API_TOKEN": TOKEN, "LEAKY_HEADER": ENV["LEAKY_HEADER"],
                                          "GH_TOKEN": ENV["GH_TOKEN"], "PLAIN_SETTING": "visible-value"}


def test_the_resource_tracker_of_api_workers_is_started_without_the_secrets() -> None:
    code = ("import os; from multiprocessing import resource_tracker as t; "
            "from coherence_network.process_hygiene import protect, start_resource_tracker_without_secrets as start; "
            "protect(); start(); print(os.environ['COHERENCE_API_TOKEN']); pid = t._resource_tracker._pid\n"
            "while b'resource_tracker' not in open(f'/proc/{pid}/cmdline', 'rb').read(): pass  # until it execs\n"
            "print(open(f'/proc/{pid}/environ', 'rb').read())")
    done = subprocess.run([sys.executable, "-c", code], env={"PATH": os.environ.get("PATH", ""), **ENV},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    token, tracker = done.stdout.splitlines()
    assert token == TOKEN  # the process itself keeps it
    assert "PLAIN_SETTING" in tracker and TOKEN not in tracker and PASSWORD not in tracker
