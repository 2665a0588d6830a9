"""A scripted model server on 127.0.0.1 speaking enough of Anthropic's Messages API to drive the real Claude Code CLI.

Claude Code is pointed at it with ANTHROPIC_BASE_URL. A request offering tools is one turn of the agent's loop: the
prompt (all user text of the conversation) goes to the test's script (``prompt -> stub_agent.Work``), and the answer
is one ``Write`` tool call per file of that work (its path made absolute in the working folder the agent names in its
system prompt) and a ``Bash`` call running its check, if it has one; once the tool results come back, the work's last
words (with the verdict the check's result gives) as the final message. A request without tools
(Claude Code's small side requests: a title, a quota check) gets a short text answer; ``count_tokens`` a count. Both
streaming (server-sent events, as the SDK reads them) and plain JSON answers are served.

Every request is recorded (``requests``). Nothing is refused silently: a prompt the script has no answer for, a body
that is not JSON, an unknown path — each gets a 4xx in Anthropic's error format, naming why, and is recorded with it
(``refused``), so a test can assert there was none.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from pathlib import PurePosixPath
from typing import Any

from tests.support.stub_agent import Work

Script = Callable[[str], Work | None]  # the prompt -> the work to do, None: not scripted
_WORKDIR = re.compile(r"^[\s-]*(?:Primary )?[Ww]orking directory: (/\S.*?)\s*$", re.MULTILINE)
CHECK_ID = "toolu_check_"  # the id of a Bash call running a work's check
SIDE_ANSWER = "Scripted answer"  # a request without tools: a title, a topic, a quota check


@dataclass
class Recorded:
    """One request as it arrived and how it was answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    status: int = 0
    kind: str = ""  # turn | side | count_tokens | refused
    why: str = ""  # why it was refused
    answer: dict[str, Any] = field(default_factory=dict)  # the message answered (turns and side requests)

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The tool results this request carried back (in its last user message)."""
        messages = (self.body or {}).get("messages") or [{}]
        return [b for b in _blocks(messages[-1]) if b.get("type") == "tool_result"]


class Refusal(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status, self.why = status, why


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _text(value: Any) -> str:
    """All text of a system prompt or message content (a string or a list of blocks)."""
    if isinstance(value, str):
        return value
    return "\n".join(b.get("text", "") for b in value if isinstance(b, dict)) if isinstance(value, list) else ""


def prompt_of(body: dict[str, Any]) -> str:
    """The user's text of a conversation (Claude Code wraps the prompt in reminders of its own)."""
    return "\n".join(_text(m.get("content")) for m in body.get("messages", []) if m.get("role") == "user")


def _tokens(value: Any) -> int:
    """A stable, plausible token count: characters / 4."""
    return max(1, len(json.dumps(value)) // 4)


class ScriptedModel:
    """``with ScriptedModel(script) as model:`` serves on ``model.url`` until the block ends."""

    def __init__(self, script: Script, model: str = "claude-scripted") -> None:
        self.script = script
        self.model = model
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._ids = count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-model", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ScriptedModel:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def of_kind(self, kind: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind]

    @property
    def refused(self) -> list[Recorded]:
        return self.of_kind("refused")

    # --- answering ---------------------------------------------------------------------------------------------
    def answer(self, record: Recorded) -> dict[str, Any]:
        """The message (or count) for a request; raises Refusal with the status and why."""
        path = record.path.split("?", 1)[0]
        body = record.body
        if record.method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            raise Refusal(404, f"no such endpoint on the scripted model: {record.method} {record.path}")
        if body is None:
            raise Refusal(400, "the body is not a JSON object")
        if path.endswith("/count_tokens"):
            record.kind = "count_tokens"
            return {"input_tokens": _tokens(body.get("messages"))}
        if not body.get("tools"):
            record.kind = "side"
            return self._message(body, [{"type": "text", "text": SIDE_ANSWER}], "end_turn")
        record.kind = "turn"
        work = self.script(prompt_of(body))
        if work is None:
            raise Refusal(400, f"the script has no answer for this prompt: {prompt_of(body)[-300:]!r}")
        if record.tool_results or not (work.files or work.check):  # the work is done: the final word
            return self._message(body, [{"type": "text", "text": work.final(self._check_passed(record, work))}],
                                 "end_turn")
        found = _WORKDIR.search(_text(body.get("system")))
        if found is None:
            raise Refusal(400, "no 'Working directory:' in the system prompt to resolve the script's paths against")
        calls = [{"type": "tool_use", "id": f"toolu_{next(self._ids):06d}", "name": "Write",
                  "input": {"file_path": str(PurePosixPath(found.group(1)) / relative), "content": content}}
                 for relative, content in work.files.items()]
        if work.check:
            calls.append({"type": "tool_use", "id": f"{CHECK_ID}{next(self._ids):06d}", "name": "Bash",
                          "input": {"command": work.check, "description": "Run the check"}})
        return self._message(body, calls, "tool_use")

    @staticmethod
    def _check_passed(record: Recorded, work: Work) -> bool | None:
        """Whether the check's Bash call succeeded (Claude Code marks a non-zero exit is_error); None: no check."""
        if not work.check:
            return None
        results = [r for r in record.tool_results if str(r.get("tool_use_id", "")).startswith(CHECK_ID)]
        if not results:
            raise Refusal(400, f"the result of the check {work.check!r} did not come back")
        return not results[-1].get("is_error")

    def _message(self, body: dict[str, Any], content: list[dict[str, Any]], stop: str) -> dict[str, Any]:
        return {"id": f"msg_scripted_{next(self._ids):06d}", "type": "message", "role": "assistant",
                "model": body.get("model") or self.model, "content": content, "stop_reason": stop,
                "stop_sequence": None, "usage": {"input_tokens": _tokens(body.get("messages")),
                                                 "output_tokens": _tokens(content)}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        model = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                record = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                  body if isinstance(body, dict) else None)
                with model._lock:
                    model.requests.append(record)
                try:
                    answer = model.answer(record)
                except Refusal as refusal:
                    record.kind, record.why, record.status = "refused", refusal.why, refusal.status
                    error = {"type": "error", "error": {"type": "invalid_request_error" if refusal.status == 400
                                                        else "not_found_error", "message": refusal.why}}
                    return self._send(refusal.status, "application/json", json.dumps(error).encode())
                record.status, record.answer = 200, answer
                if record.body and record.body.get("stream") and record.kind != "count_tokens":
                    return self._send(200, "text/event-stream", b"".join(_events(answer)))
                self._send(200, "application/json", json.dumps(answer).encode())

            def _send(self, status: int, kind: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = _serve

            def log_message(self, format: str, *args: Any) -> None:  # recorded instead
                pass

        return Handler


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def _events(message: dict[str, Any]) -> Iterator[bytes]:
    """A message as the Messages API streams it: message_start, each block's start/delta/stop, message_delta with
    the stop reason and output tokens, message_stop."""
    usage = message["usage"]
    yield _event("message_start", {"message": {**message, "content": [], "stop_reason": None,
                                               "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            start, delta = {**block, "text": ""}, {"type": "text_delta", "text": block["text"]}
        else:
            partial = json.dumps(block["input"])
            start, delta = {**block, "input": {}}, {"type": "input_json_delta", "partial_json": partial}
        yield _event("content_block_start", {"index": index, "content_block": start})
        yield _event("content_block_delta", {"index": index, "delta": delta})
        yield _event("content_block_stop", {"index": index})
    yield _event("message_delta", {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                   "usage": {"output_tokens": usage["output_tokens"]}})
    yield _event("message_stop", {})
