"""The human decision loop on Telegram, end to end: a real API, a real runner, the bot as a real process
(``coherence telegram``) and a fake Bot API on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coherence_network.client import ApiClient
from tests.support.api import ApiProcess, ServedApi
from tests.support.fake_telegram import TOKEN, FakeTelegram
from tests.support.net import free_port, wait_until
from tests.support.runner import RunnerProcess, group_gone, task_group

USER, STRANGER, GROUP = 4242, 777, -100123
ASK = (f"{sys.executable} -c \"import os; d=os.environ.get('COHERENCE_DECISION'); "
       f"print('decided: '+d if d else 'NEEDS_DECISION: Ship it?')\"")
ACCESS = {"TELEGRAM_ALLOWED_USER_IDS": str(USER), "TELEGRAM_CHAT_IDS": str(GROUP)}
LEASE = 3.0  # a runner renews every LEASE / 3 s: when it learns of a cancel


class BotProcess:
    """``python -m coherence_network.cli telegram`` against an API and the fake Bot API."""

    def __init__(self, api: ServedApi, fake: FakeTelegram, **env: str) -> None:
        self.env = {
            **os.environ, "COHERENCE_HOME": str(api.home), "AGENT_API_BASE": api.url, "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_BASE": fake.base, "TELEGRAM_POLL_TIMEOUT": "1", "TELEGRAM_NOTIFY_INTERVAL": "0.2",
            "COHERENCE_HTTP_TIMEOUT": "5", **ACCESS, **env,
        }
        self.log = api.home / "logs" / "telegram.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BotProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "coherence_network.cli", "telegram"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        return self

    def stop(self) -> None:
        """SIGTERM, as an operator or the start script stops it; it must exit 0."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(15) == 0
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)
            raise


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    server = FakeTelegram().start()
    yield server
    server.stop()


@pytest.fixture
def bots() -> Iterator[list[BotProcess]]:
    """Bots a test starts; each is stopped at the end, whatever happened."""
    started: list[BotProcess] = []
    yield started
    for bot in started:
        bot.stop()


def start_bot(bots: list[BotProcess], api: ServedApi, fake: FakeTelegram, **env: str) -> BotProcess:
    bot = BotProcess(api, fake, **env).start()
    bots.append(bot)
    return bot


def ask_as_runner(client: ApiClient, question: str) -> int:
    """Drive one task to needs_decision the way a runner does: create, claim, finish with the question."""
    created = client.create_task(f"decide: {question}", "run", command="true")
    task = client.claim("test-runner")
    assert task is not None and task.id == created.id
    client.finish(task.id, task.claim_token, "needs_decision", decision_prompt=question)
    return task.id


def has_text(fake: FakeTelegram, chat: int, *parts: str) -> bool:
    return any(all(p in text for p in parts) for text in fake.texts(chat))


def seen_by_bot(fake: FakeTelegram, update: dict[str, Any]) -> bool:
    """The bot confirmed the update: a later getUpdates asked for offsets beyond it."""
    return any(c.params.get("offset", 0) > update["update_id"] for c in fake.calls_of("getUpdates"))


def test_decision_answered_from_telegram_reruns_the_task(tmp_path: Path, fake: FakeTelegram,
                                                        bots: list[BotProcess]) -> None:
    """Then a running `sleep 300` cancelled with /cancel: its group is gone within a lease renewal and the grace."""
    served_api = ServedApi(tmp_path / "home", env={"COHERENCE_LEASE_SECONDS": str(LEASE)}).start()
    client = ApiClient(served_api.url, token="", retries=0)
    runner = RunnerProcess(served_api.home, served_api.url, "--interval", "0.1",
                           env={"AGENT_KILL_GRACE_SECONDS": "1"}).start()
    try:
        task_id = client.create_task("ask before shipping", "run", command=ASK).id
        bot = start_bot(bots, served_api, fake)
        wait_until(lambda: has_text(fake, GROUP, "Ship it?", f"/reply {task_id} <decision>"), 30, "the question")

        # Not allowed: a stranger, an allowed user in a chat that is not allowed; ignored: plain text, an edit,
        # a sticker. None of them changes anything or gets an answer.
        ignored = [
            fake.message(STRANGER, f"/reply {task_id} no"),
            fake.message(USER, f"/reply {task_id} no", chat_id=-555, chat_type="group"),
            fake.message(USER, "no, do not ship"),
            fake.message(USER, f"/reply {task_id} no", kind="edited_message"),
            fake.push({"message": {"message_id": 1, "from": {"id": USER}, "chat": {"id": USER, "type": "private"},
                                   "sticker": {"file_id": "x"}}}),
        ]
        wait_until(lambda: seen_by_bot(fake, ignored[-1]), 20, "the bot to read the ignored updates")
        assert client.get_task(task_id).status == "needs_decision"
        assert fake.texts(STRANGER) == [] and fake.texts(-555) == [] and fake.texts(USER) == []

        fake.message(USER, "/frobnicate")
        wait_until(lambda: has_text(fake, USER, "Unknown command /frobnicate", "/reply <id> <decision>"), 20, "help")
        fake.message(USER, "/status")
        wait_until(lambda: has_text(fake, USER, "Waiting for a decision: 1", f"/reply {task_id} <decision>"), 20,
                   "/status")
        fake.message(USER, f"/reply {task_id} yes")
        wait_until(lambda: has_text(fake, USER, f"Decision recorded for task #{task_id} by telegram:{USER}: yes"), 20,
                   "the confirmation")
        wait_until(lambda: client.get_task(task_id).status == "completed", 30, "the rerun")
        done = client.get_task(task_id)
        assert (done.decision, done.decided_by, done.output) == ("yes", f"telegram:{USER}", "decided: yes\n")

        fake.message(USER, f"/reply {task_id} again")
        wait_until(lambda: has_text(fake, USER, f"Task #{task_id} does not wait for a decision"), 20, "the refusal")
        fake.message(USER, "/reply 99999 yes")
        wait_until(lambda: has_text(fake, USER, "No task #99999"), 20, "no such task")
        fake.message(USER, f"/task {task_id}")
        wait_until(lambda: has_text(fake, USER, "status: completed", f"decided_by: telegram:{USER}"), 20, "/task")

        # Pause and resume, through the API as coherence pause does, as telegram:<username>; only allowed users.
        refused = fake.message(STRANGER, "/pause run not yours to pause")
        wait_until(lambda: seen_by_bot(fake, refused), 20, "the bot to read the stranger's /pause")
        assert client.pauses().pauses == [] and fake.texts(STRANGER) == []
        fake.push({"message": {"message_id": 2, "text": "/pause run provider down",
                               "from": {"id": USER, "is_bot": False, "username": "ops_alice"},
                               "chat": {"id": USER, "type": "private"}}})
        wait_until(lambda: has_text(fake, USER, "Paused run since", "by telegram:ops_alice: provider down",
                                    "Resume with: /resume run"), 20, "the pause's confirmation")
        [held] = client.pauses().pauses
        assert (held.scope, held.by, held.reason) == ("run", "telegram:ops_alice", "provider down")
        fake.message(USER, "/status")
        wait_until(lambda: has_text(fake, USER, "Paused:\n  run since", "-> /resume run"), 20, "/status's pauses")
        fake.message(USER, "/resume run")
        wait_until(lambda: has_text(fake, USER, f"Resumed run by telegram:{USER}"), 20, "the resume")
        assert client.pauses().pauses == []
        trail = [(r.actor, r.channel, r.action) for r in client.audit(task_id=task_id, action="decide").items]
        assert trail == [(f"telegram:{USER}", "telegram", "decide")]  # the refused second answer: none
        sleeping = client.create_task("sleep by mistake", "run", command="sleep 300").id
        wait_until(lambda: task_group(served_api.home, sleeping) is not None, 30, "the sleep to run")
        pgid = task_group(served_api.home, sleeping)
        assert pgid is not None
        fake.message(USER, f"/cancel {sleeping} started   by mistake")
        wait_until(lambda: has_text(fake, USER, f"Cancel requested for task #{sleeping} by telegram:{USER}: "
                                    "started by mistake"), 20, "the cancel's answer")
        wait_until(lambda: group_gone(pgid), LEASE / 3 + 4, "the sleep's process group to be gone")
        wait_until(lambda: client.get_task(sleeping).status == "cancelled", 20, "the sleep cancelled")
        assert client.get_task(sleeping).cancelled_by == f"telegram:{USER}"
        fake.message(USER, f"/cancel {task_id} too late")
        wait_until(lambda: has_text(fake, USER, f"Task #{task_id} is completed: only pending"), 20, "the refusal")
    finally:
        runner.stop()
        client.close()
        served_api.stop()
    bot.stop()
    log = bot.log.read_text()
    assert f"refused sender: user {STRANGER}" in log and f"command from user {USER} in chat {USER}: /reply" in log
    assert "sent to chat" in log and TOKEN not in log


def _opened_by(path: Path) -> set[int]:
    """The processes that hold ``path`` open (from /proc: Linux)."""
    holders = set()
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fds.iterdir()):
                holders.add(int(fds.parent.name))
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return holders


def test_webhook_needs_the_secret(tmp_path: Path, fake: FakeTelegram, bots: list[BotProcess]) -> None:
    api = ApiProcess(tmp_path / "home", env=ACCESS).start()  # a process: the test asks which process holds which log
    client = ApiClient(api.url, token="", retries=0)
    hook = f"{api.url}/api/agent/telegram/webhook"
    try:
        task_id = ask_as_runner(client, "Merge the branch?")
        reply = {"update_id": 1, "message": {"message_id": 1, "text": f"/reply {task_id} yes",
                                             "from": {"id": USER}, "chat": {"id": USER, "type": "private"}}}
        assert httpx.post(hook, json=reply, headers={"X-Telegram-Bot-Api-Secret-Token": "x"}).status_code == 401

        start_bot(bots, api, fake, TELEGRAM_WEBHOOK_URL="https://bot.example/api/agent/telegram/webhook")
        wait_until(lambda: fake.webhook is not None, 20, "setWebhook")
        assert fake.webhook is not None and fake.webhook["url"] == "https://bot.example/api/agent/telegram/webhook"
        secret = fake.webhook["secret_token"]
        assert (api.home / "run" / "telegram_webhook_secret").read_text().strip() == secret
        wait_until(lambda: has_text(fake, GROUP, "Merge the branch?", f"/reply {task_id} <decision>"), 20,
                   "the question, from the notifications loop in webhook mode")

        for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": secret + "x"}, {"X-Telegram-Bot-Api-Secret-Token": ""}):
            answer = httpx.post(hook, json=reply, headers=headers)
            assert answer.status_code == 401, headers
        assert client.get_task(task_id).status == "needs_decision"

        right = {"X-Telegram-Bot-Api-Secret-Token": secret}
        stranger = {**reply, "message": {**reply["message"], "from": {"id": STRANGER},
                                         "chat": {"id": STRANGER, "type": "private"}}}
        for ignored in (stranger, {"update_id": 2, "edited_message": reply["message"]}, {"junk": True}):
            answer = httpx.post(hook, json=ignored, headers=right)
            assert (answer.status_code, answer.json()) == (200, {})
        not_json = httpx.post(hook, content=b"{not json", headers={**right, "Content-Type": "application/json"})
        assert (not_json.status_code, not_json.json()) == (200, {})
        assert client.get_task(task_id).status == "needs_decision"

        answer = httpx.post(hook, json=reply, headers=right)
        assert answer.status_code == 200
        body = answer.json()
        assert body["method"] == "sendMessage" and body["chat_id"] == USER
        assert f"Decision recorded for task #{task_id} by telegram:{USER}: yes" in body["text"]
        task = client.get_task(task_id)
        assert (task.status, task.decision, task.decided_by) == ("pending", "yes", f"telegram:{USER}")

        def answer_to(text: str) -> str:
            """The webhook's reply to USER's command, run in the API's process over its own store."""
            update = {"update_id": 3, "message": {**reply["message"], "text": text}}
            answered = httpx.post(hook, json=update, headers=right)
            assert answered.status_code == 200 and answered.json()["chat_id"] == USER
            return str(answered.json()["text"])

        assert answer_to("/status").startswith("Tasks: 1 (pending 1)")
        assert "Fatal issues: none" in answer_to("/attention")
        assert answer_to("/tasks pending").startswith("1 tasks pending") and "Unknown status" in answer_to("/tasks x")
        assert f"decided_by: telegram:{USER}" in answer_to(f"/task {task_id}")
        assert answer_to("/reply 99999 yes") == "No task #99999; nothing changed."
        # pause and resume in-process over the API's own store: the same replies and the same pause as the CLI's
        assert answer_to("/pause").startswith("Usage: /pause [type] <reason>")
        assert answer_to("/pause impl").startswith("Usage:")  # a reason is required
        assert "Paused all since" in answer_to("/pause maintenance window")
        assert answer_to("/pause all another reason").startswith("Already paused, kept as it was: all since")
        assert "Paused impl since" in answer_to("/pause impl provider down")
        assert [(p.scope, p.by) for p in client.pauses().pauses] == [("all", f"telegram:{USER}"),
                                                                      ("impl", f"telegram:{USER}")]
        assert "Paused:\n  all since" in answer_to("/status") and "Unknown type 'x'" in answer_to("/resume x")
        assert answer_to("/resume").startswith(f"Resumed all by telegram:{USER}")
        assert answer_to("/resume impl").startswith("Resumed impl") and client.pauses().pauses == []
        assert answer_to("/resume") == "all was not paused; nothing changed."
        assert "Paused: nothing" in answer_to("/status")
        assert "does not wait for a decision (its status is pending)" in answer_to(f"/reply {task_id} no")
        trail = [(r.actor, r.channel, r.action) for r in client.audit(task_id=task_id, action="decide").items]
        assert trail == [(f"telegram:{USER}", "telegram", "decide")]
        assert answer_to(f"/cancel {task_id} not now") == f"Task #{task_id} cancelled by telegram:{USER}: not now"
        assert answer_to(f"/cancel {task_id} again") == f"Task #{task_id} cancelled by telegram:{USER}: not now"
        assert answer_to("/cancel 99999 x") == "No task #99999; nothing changed."
        assert answer_to(f"/cancel {task_id}").startswith("Usage: /cancel <id> <reason>")
        assert fake.calls_of("getUpdates") == []
        # The webhook logs to its own process's log; telegram.log has one writer, the bot's process.
        log = (api.home / "logs" / "api.log").read_text()
        assert "webhook call from 127.0.0.1 refused: wrong secret" in log and "refused: missing secret" in log
        assert f"command from user {USER} in chat {USER}: /reply" in log
        bot = bots[0].proc
        assert bot is not None and api.proc is not None
        assert _opened_by(api.home / "logs" / "telegram.log") == {bot.pid}
        assert _opened_by(api.home / "logs" / "api.log") == {api.proc.pid}
    finally:
        client.close()
        for bot in bots:
            bot.stop()
        api.stop()


def test_bot_api_outage_delays_messages_but_keeps_them_in_order_once(served_api: ServedApi, fake: FakeTelegram,
                                                                     bots: list[BotProcess]) -> None:
    client = ApiClient(served_api.url, token="", retries=0)
    questions = [f"Question {n}?" for n in range(1, 4)]
    ids = [ask_as_runner(client, q) for q in questions]
    fake.fail_next("getUpdates", 2, 500)
    fake.fail_next("sendMessage", 2, 429, retry_after=1)
    fake.fail_next("sendMessage", 1, 500)
    bot = start_bot(bots, served_api, fake)
    wait_until(lambda: len(fake.texts(GROUP)) >= 3, 40, "three alerts after the outage")
    texts = fake.texts(GROUP)
    assert [q in t for q, t in zip(questions, texts)] == [True, True, True], texts
    assert [f"/reply {i} <decision>" in t for i, t in zip(ids, texts)] == [True, True, True]
    sends = fake.calls_of("sendMessage")
    assert [c.status for c in sends[:4]] == [429, 429, 500, 200]
    assert sends[1].at - sends[0].at >= 0.9 and sends[2].at - sends[1].at >= 0.9  # retry_after respected

    # A restart resends nothing; the next new question still arrives, after the first three, once.
    bot.stop()
    start_bot(bots, served_api, fake)
    fourth = ask_as_runner(client, "Question 4?")
    wait_until(lambda: has_text(fake, GROUP, "Question 4?", f"/reply {fourth} <decision>"), 30, "the fourth alert")
    texts = fake.texts(GROUP)
    assert len(texts) == 4 and "Question 4?" in texts[3]
    log = bot.log.read_text()
    assert "429" in log and "retry" in log and TOKEN not in log
    client.close()


def test_a_stop_while_telegram_answers_late_still_sends_that_message_once(served_api: ServedApi, fake: FakeTelegram,
                                                                          bots: list[BotProcess]) -> None:
    """SIGTERM lands after Telegram took a message and before its answer came: the bot waits for the answer and
    takes the message out of its outbox before it exits, so the next start does not send it again."""
    client = ApiClient(served_api.url, token="", retries=0)
    first = ask_as_runner(client, "Late answer?")
    fake.answer_late("sendMessage", 1, 2.0)
    bot = start_bot(bots, served_api, fake)
    wait_until(lambda: has_text(fake, GROUP, "Late answer?"), 30, "the alert taken by Telegram")
    bot.stop()  # its answer is still on the way: the notifier's loop alone would end within 0.2 s
    state = json.loads((served_api.home / "run" / "telegram_state.json").read_text())
    assert state["outbox"] == [] and any(f"decision:{first}:" in key for key in state["notified"])

    start_bot(bots, served_api, fake)
    second = ask_as_runner(client, "Next question?")
    wait_until(lambda: has_text(fake, GROUP, f"/reply {second} <decision>"), 30, "the next alert")
    texts = fake.texts(GROUP)
    assert len(texts) == 2 and "Late answer?" in texts[0] and "Next question?" in texts[1], texts
    client.close()


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "start_with_telegram.sh"


def _run_script(home: Path, api_url: str, fake: FakeTelegram) -> subprocess.Popen[bytes]:
    port = api_url.rsplit(":", 1)[1]
    env = {**os.environ, "COHERENCE_HOME": str(home), "AGENT_API_BASE": api_url, "COHERENCE_API_PORT": port,
           "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE": fake.base, "TELEGRAM_POLL_TIMEOUT": "1", **ACCESS}
    return subprocess.Popen([str(SCRIPT)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("api_running", [True, False], ids=["api-already-running", "api-started-by-script"])
def test_start_script_stops_only_what_it_started(tmp_path: Path, fake: FakeTelegram, api_running: bool) -> None:
    api = ApiProcess(tmp_path / "home")  # a process, or the port the script's own API takes
    if api_running:
        api.start()
    script = _run_script(api.home, api.url, fake)
    try:
        wait_until(lambda: _answers(api.url), 30, "the API")
        wait_until(lambda: len(fake.calls_of("getUpdates")) > 0, 30, "the bot polling")
        script.send_signal(signal.SIGTERM)
        assert script.wait(30) == 143
        wait_until(lambda: "telegram bot stopped" in (api.home / "logs" / "telegram.log").read_text(), 10, "bot exit")
        if api_running:
            assert _answers(api.url)
        else:
            wait_until(lambda: not _answers(api.url), 20, "the API the script started to stop")
    finally:
        if script.poll() is None:
            script.kill()
        api.stop()


def test_start_script_without_a_token_says_so_and_starts_nothing(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    env = {**os.environ, "COHERENCE_HOME": str(home), "COHERENCE_API_PORT": str(port)}
    env.pop("TELEGRAM_BOT_TOKEN", None)
    env.pop("AGENT_API_BASE", None)
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip() == "TELEGRAM_BOT_TOKEN is not set (get one from @BotFather)"
    assert not _answers(f"http://127.0.0.1:{port}")  # no API was started for a bot that cannot run
