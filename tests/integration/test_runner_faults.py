"""Faults stay local (issue 18): a runner slot that is busy delivering a result is not claimed for, so no claim
waits past its lease to run as a stale second copy; and a full disk neither kills the runner's slots, nor charges
attempts, nor churns the queue, and everything runs once space is back. Real runner processes, the API over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coherence_network.client import ApiClient
from coherence_network.contract import Task, TaskStatus, TaskType
from coherence_network.runner import Runner
from coherence_network.settings import Settings
from coherence_network.task_run import CLAIM_MARGIN, Claim
from tests.integration.test_runner import py
from tests.support.api import ServedApi
from tests.support.net import wait_until
from tests.support.proxy import HoldingProxy
from tests.support.runner import RunnerProcess
from tests.support.small_disk import fill
from tests.support.small_disk import small_disk as small_disk_at


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    """One API (SQLite, the default lease) for the tests here that need no lease of their own."""
    api = ServedApi(tmp_path_factory.mktemp("api") / "home").start()
    yield api
    api.stop()


def gated(tmp_path: Path, name: str, *, seconds: float | None = None) -> str:
    """A task that notes each start of it in ``runs_<name>``, then waits for ``gate_<name>`` (or sleeps)."""
    runs, gate = tmp_path / f"runs_{name}", tmp_path / f"gate_{name}"
    wait = (f"time.sleep({seconds})" if seconds is not None else
            f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)")
    return py(f"import os,time\nopen({str(runs)!r}, 'a').write('start\\n')\n{wait}\nprint('{name} done')")


def starts(tmp_path: Path, name: str) -> int:
    runs = tmp_path / f"runs_{name}"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_a_slot_delivering_its_result_is_not_claimed_for(tmp_path: Path) -> None:
    """The issue's stale claim, made deterministic: slot A's finish is held (a slow API) while slot B claims. Before
    the fix B claimed for A too; that task sat in the runner's handoff past its lease (A went on with the task its
    finish claimed), ran again elsewhere, and the stale claim, started when A was free, killed the current run:
    the task failed with attempts left. Now B claims for itself only and every task runs once, no attempt used.
    The lease (4 s) stays under t1's 5 s run, so a task left in the handoff would outlive it; at 3 s a claim answered
    late on a loaded machine (the proxy and the API on 2 busy cores) was once released unstarted (CI of stop 29)."""
    home, lease = tmp_path / "home", 4.0
    api = ServedApi(home, env={"COHERENCE_LEASE_SECONDS": str(lease)}).start()
    proxy = HoldingProxy(api.url).start()
    proc = RunnerProcess(home, proxy.url, "--workers", "2", "--interval", "1",
                         env={"AGENT_KILL_GRACE_SECONDS": "1", "COHERENCE_HTTP_TIMEOUT": "20"})
    try:
        with ApiClient(api.url, token="") as client:
            first = client.create_task("t0", "run", command=gated(tmp_path, "t0"))
            proc.start()
            wait_until(lambda: client.get_task(first.id).status == TaskStatus.RUNNING, 30, "t0 running")
            proxy.hold("finish")
            (tmp_path / "gate_t0").write_text("go")
            wait_until(lambda: proxy.held == 1, 30, "slot A delivering t0, its finish held")
            claims = proxy.count("claim") + proxy.count("claims")
            wait_until(lambda: proxy.count("claim") + proxy.count("claims") > claims, 10, "slot B claiming again")
            t1, t2, t3 = client.create_tasks([
                {"direction": "t1", "task_type": TaskType.RUN, "priority": 5, "command": gated(tmp_path, "t1",
                                                                                                seconds=5)},
                {"direction": "t2", "task_type": TaskType.RUN, "priority": 4, "max_attempts": 10,
                 "command": gated(tmp_path, "t2")},
                {"direction": "t3", "task_type": TaskType.RUN, "priority": 3, "command": gated(tmp_path, "t3")},
            ])
            wait_until(lambda: starts(tmp_path, "t1") == 1, 30, "t1 started by slot B")
            proxy.release()  # slot A's finish arrives, and claims its next task with it
            wait_until(lambda: client.get_task(t1.id).status == TaskStatus.COMPLETED, 30, "t1 done")
            wait_until(lambda: starts(tmp_path, "t2") >= 1, 30, "t2 started")
            claims = proxy.count("claim") + proxy.count("claims")
            (tmp_path / "gate_t3").write_text("go")
            # slot A is free now: before the fix it started its stale claim of t2 here, stopping the current run
            wait_until(lambda: starts(tmp_path, "t2") > 1 or proxy.count("claim") + proxy.count("claims") > claims,
                       30, "slot A free again")
            (tmp_path / "gate_t2").write_text("go")
            wait_until(lambda: client.count_tasks().by_status.get(TaskStatus.RUNNING, 0) == 0
                       and client.get_task(t2.id).status != TaskStatus.PENDING, 30, "all settled")
            done = [client.get_task(t.id) for t in (first, t1, t2, t3)]
            assert [(t.status, t.attempts, t.claim_token) for t in done] == [(TaskStatus.COMPLETED, 0, 1)] * 4
            assert [starts(tmp_path, name) for name in ("t0", "t1", "t2", "t3")] == [1, 1, 1, 1]
        runner_log = (home / "logs" / "agent_runner.log").read_text()
        assert "stopped the previous run" not in runner_log and "not started" not in runner_log
    finally:
        proc.stop()
        proxy.stop()
        api.stop()


def test_a_slot_waiting_out_a_failed_claim_is_not_claimed_for(tmp_path: Path) -> None:
    """The issue's own reproduction: one slot waits out failed claims (the API answered 503) when the other claims.
    Before the fix that claim was made for both, and the task meant for the waiting slot sat in the handoff past its
    lease, was reaped (an attempt used) and then run anyway on a claim that was no longer the runner's. Now the
    claim is for the claiming slot alone and the waiting slot claims its own when its wait is over."""
    home, lease = tmp_path / "home", 2.0
    api = ServedApi(home, env={"COHERENCE_LEASE_SECONDS": str(lease)}).start()
    proxy = HoldingProxy(api.url).start()
    proc = RunnerProcess(home, proxy.url, "--workers", "2", "--interval", "1", env={"AGENT_KILL_GRACE_SECONDS": "1"})
    runner_log = home / "logs" / "agent_runner.log"
    try:
        with ApiClient(api.url, token="") as client:
            first = client.create_task("t0", "run", command=gated(tmp_path, "t0"))
            proc.start()
            wait_until(lambda: client.get_task(first.id).status == TaskStatus.RUNNING, 30, "t0 running in slot A")
            proxy.fail("claim", "claims")  # slot B's claims fail; slot A runs t0 and does not claim
            wait_until(lambda: runner_log.exists() and "retrying in 4.0s" in runner_log.read_text(), 30,
                       "slot B waiting 4 s after failed claims")
            proxy.fail()
            claims = proxy.count("claim") + proxy.count("claims")
            (tmp_path / "gate_t0").write_text("go")  # slot A delivers t0, finds nothing, and claims for free slots
            wait_until(lambda: proxy.count("claim") + proxy.count("claims") > claims, 10, "slot A claiming")
            t1, t2 = client.create_tasks([
                {"direction": "t1", "task_type": TaskType.RUN, "priority": 5, "command": gated(tmp_path, "t1")},
                {"direction": "t2", "task_type": TaskType.RUN, "max_attempts": 10, "command": gated(tmp_path, "t2")},
            ])
            (tmp_path / "gate_t2").write_text("go")
            wait_until(lambda: client.get_task(t2.id).status == TaskStatus.COMPLETED, 30, "t2 done")
            (tmp_path / "gate_t1").write_text("go")
            wait_until(lambda: client.get_task(t1.id).status == TaskStatus.COMPLETED, 30, "t1 done")
            done = [client.get_task(t.id) for t in (first, t1, t2)]
            assert [(t.status, t.attempts, t.claim_token) for t in done] == [(TaskStatus.COMPLETED, 0, 1)] * 3
            assert [starts(tmp_path, name) for name in ("t0", "t1", "t2")] == [1, 1, 1]
    finally:
        proc.stop()
        proxy.stop()
        api.stop()


def test_a_claim_past_its_window_is_handed_back_and_an_older_one_never_starts(shared_api: ServedApi,
                                                                               tmp_path: Path) -> None:
    """The runner's last guard before it starts a claim, against a real API: a claim older (by this host's clock)
    than 3/4 of the lease the API granted is released, at no attempt's cost; a claim of a task this runner already
    started a newer claim of is dropped."""
    settings = Settings(coherence_home=tmp_path / "runner_home", agent_api_base=shared_api.url,
                        coherence_lease_seconds=60)
    runner = Runner(settings, runner_id="guard")
    with ApiClient(shared_api.url, token="") as client:
        made = client.create_task("late", "run", command="true")
        late = client.claim("guard")
        assert late is not None and late.id == made.id
        assert not runner._startable(Claim(late, time.monotonic() - 60 * (1 - CLAIM_MARGIN) - 1))
        released = client.get_task(made.id)
        assert (released.status, released.attempts, released.claim_token) == (TaskStatus.PENDING, 0, 1)
        fresh = client.claim("guard")
        assert fresh is not None and fresh.claim_token == 2
        assert runner._startable(Claim(fresh, time.monotonic()))
        assert not runner._startable(Claim(late, time.monotonic()))  # run 1 after run 2: never, even if "fresh"
        assert not runner._startable(Claim(fresh, time.monotonic()))  # nor the same claim twice
        assert client.get_task(made.id).status == TaskStatus.RUNNING  # a dropped stale claim changes nothing
    runner.client.close()


# --- a full disk -----------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs for the runner's COHERENCE_HOME."""
    with small_disk_at(tmp_path / "runner_home", 2) as mount:
        yield mount


def claims_of(client: ApiClient, tasks: list[Task]) -> int:
    """Claims the tasks have had: each claim hands out the next claim token."""
    return sum(client.get_task(t.id).claim_token for t in tasks)


def test_a_full_disk_blocks_slots_without_killing_them_or_costing_attempts(
    shared_api: ServedApi, small_disk: Path, tmp_path: Path
) -> None:
    """The runner's COHERENCE_HOME fills up while a task runs: its result, which the outbox cannot store, is
    delivered from memory. Tasks claimed then cannot start (their log cannot be written): each goes back to pending
    with no attempt used, both slots report blocked (the runner_blocked flag) but live, and they claim no faster
    than the backoff allows. Once space is back every task runs, once. (Before the fix the slots died on the
    outbox write, the runner heartbeated on with no slot, and the queue was claimed in under a second.)"""
    api = shared_api
    proc = RunnerProcess(small_disk, api.url, "--workers", "2", output=tmp_path / "runner.out",
                         env={"COHERENCE_RUNNER_BACKOFF_MAX_SECONDS": "2", "COHERENCE_RUNNER_HEARTBEAT_SECONDS": "0.5"})
    try:
        with ApiClient(api.url, token="") as client:
            running = client.create_task("long", "run", command=gated(tmp_path, "long"))
            proc.start()
            wait_until(lambda: starts(tmp_path, "long") == 1, 30, "a task running")
            filler = fill(small_disk)
            (tmp_path / "gate_long").write_text("go")  # it ends on the full disk: its result cannot be stored
            wait_until(lambda: client.get_task(running.id).status == TaskStatus.COMPLETED, 30, "its result delivered")
            assert client.get_task(running.id).output == "long done\n"  # from memory, though its log is cut short
            assert not any((small_disk / "run" / "runner_outbox").glob("task_*"))
            tasks = client.create_tasks([{"direction": f"t{i}", "task_type": TaskType.RUN,
                                          "command": py(f"print('task {i}')")} for i in range(6)])

            def blocked() -> dict[str, object] | None:
                info = client.get("/api/agent/runners")["items"][0]["info"]
                return info if info["slots_blocked"] == 2 else None

            wait_until(lambda: blocked() is not None, 30, "both slots blocked")
            began = time.monotonic()
            claims = claims_of(client, tasks)
            time.sleep(4)  # the disk stays full: the slots keep backing off (1 s, then 2 s: the bound here)
            claimed = claims_of(client, tasks) - claims
            seconds = time.monotonic() - began
            info = blocked()
            assert info is not None and info["slots_alive"] == 2 and "No space left" in str(info["last_error"])
            flags = {f["rule"]: f for f in client.get("/api/agent/pipeline-status")["attention"]}
            assert "runner_blocked" in flags and "No space left" in flags["runner_blocked"]["message"]
            assert claimed <= 2 * (seconds / 1 + 1), f"{claimed} claims in {seconds:.1f}s"
            snapshot = [client.get_task(t.id) for t in tasks]
            assert {t.status for t in snapshot} <= {TaskStatus.PENDING, TaskStatus.RUNNING}
            assert [t.attempts for t in snapshot] == [0] * 6  # a release costs no attempt
            print(f"full disk: {claimed} claims in {seconds:.1f}s ({claimed / seconds:.2f}/s)")
            filler.unlink()
            wait_until(lambda: all(client.get_task(t.id).status == TaskStatus.COMPLETED for t in tasks), 30,
                       "every task done once space is back")
            done = [client.get_task(t.id) for t in tasks]
            assert [(t.attempts, t.output) for t in done] == [(0, f"task {i}\n") for i in range(6)]
            wait_until(lambda: client.get("/api/agent/runners")["items"][0]["info"]["slots_blocked"] == 0, 10,
                       "slots no longer blocked")
            assert "runner_blocked" not in {f["rule"] for f in client.get("/api/agent/pipeline-status")["attention"]}
        assert proc.proc is not None and proc.proc.poll() is None
    finally:
        proc.stop()


def test_a_claim_answered_late_counts_its_lease_from_before_the_grant(shared_api: ServedApi, tmp_path: Path) -> None:
    """The stale claim the chaos bench found under load (a run started 2 s after its lease ran out): the API granted
    a claim, then stalled (SIGSTOP) before its answer left. Counted from when the answer arrived, the lease looked
    fresh and the task started on a lease already spent. The runner counts it from when it sent the claim, plus how
    long the API says it held a long poll before the look that claimed: never later than the grant, and a long
    poll's wait is not mistaken for age."""
    proxy = HoldingProxy(shared_api.url).start()
    runner = Runner(Settings(coherence_home=tmp_path / "home", agent_api_base=proxy.url), runner_id="late-answers",
                    interval=10)
    claims: list[Claim | None] = []
    try:
        with ApiClient(shared_api.url, token="") as client:
            stalled = client.create_task("answered late", "run", command="true")
            proxy.hold_answers("claims")
            sent = time.monotonic()
            claiming = threading.Thread(target=lambda: claims.append(runner._claim(0)))
            claiming.start()
            wait_until(lambda: proxy.held == 1, 10, "the claim granted, its answer held")
            assert client.get_task(stalled.id).status == TaskStatus.RUNNING
            time.sleep(1.0)  # the stall itself, not a wait for an event
            proxy.release()
            claiming.join(10)
            late = claims.pop()
            assert late is not None and late.task.id == stalled.id
            assert late.granted - sent < 0.5, "counted from the late answer, not from before the grant"

            polls = proxy.count("claims")
            sent = time.monotonic()
            claiming = threading.Thread(target=lambda: claims.append(runner._claim(1)))
            claiming.start()
            wait_until(lambda: proxy.count("claims") > polls, 10, "the long poll reached the API")
            time.sleep(0.5)  # the poll waits in the API for this long before any work exists
            waited = client.create_task("after a wait", "run", command="true")
            created = time.monotonic()
            claiming.join(10)
            polled = claims.pop()
            assert polled is not None and polled.task.id == waited.id
            assert sent + 0.4 < polled.granted < created, "the API's hold counts; the grant came after the create"
            for claim in (late, polled):
                client.finish(claim.task.id, claim.task.claim_token, TaskStatus.COMPLETED)
    finally:
        proxy.stop()
        runner.client.close()
