"""The runner's results on their way to the API: nothing a task produced is lost to an API outage or a restart.

Each result is written to ``var/run/runner_outbox/task_{id}_{claim token}.json`` before it is sent and removed once
the API has it (or refused it for good: the claim is no longer ours). What waits there is delivered when the API is
back, also by a restarted runner. When the outbox cannot be written (a full or read-only disk) the result is kept in
memory and sent all the same; it is lost only if the runner also stops before the API answers, and then the log
names it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from coherence_network.client import ApiClient, ApiConflict, ApiError, ApiNotFound, ApiUnavailable
from coherence_network.logfiles import RUN_FILES, remove_dead_writers_temps, write_json_atomic
from coherence_network.settings import Settings
from coherence_network.task_run import Claim, TaskResult

log = logging.getLogger("coherence.runner")


class ResultOutbox:
    """One runner's outbox. ``note`` records a problem for the runner heartbeat (its last error)."""

    def __init__(self, settings: Settings, client: ApiClient, runner_id: str, types: list[str] | None,
                 note: Callable[[str], None]) -> None:
        self.folder = RUN_FILES["runner_outbox/"].path(settings)
        self.client = client
        self.runner_id = runner_id
        self.types = types
        self.note = note
        self.unsaved: dict[str, TaskResult] = {}  # results the outbox could not store (disk full): sent from memory
        self.lock = threading.Lock()  # guards unsaved
        self.delivering = threading.Lock()  # one delivery at a time, so a slot and the outbox flush never race

    def open(self) -> None:
        """Create the folder and remove the temporary files of writers that died while writing one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in remove_dead_writers_temps(self.folder):
            log.warning("removed %s, left by a runner that died while writing it", path.name)

    def path(self, result: TaskResult) -> Path:
        return self.folder / f"task_{result.task_id}_{result.claim_token}.json"

    def keep(self, result: TaskResult, *, claim_next: bool = False) -> tuple[bool, Claim | None]:
        """Persist a result, then send it; with ``claim_next`` the delivery also claims the slot's next task (one
        call). (delivered?, the next claim when one came)."""
        path = self.path(result)
        try:
            write_json_atomic(path, asdict(result))
        except OSError as exc:
            self.note(f"task {result.task_id}: result not stored in the outbox ({exc}); kept in memory")
            with self.lock:
                self.unsaved[path.name] = result
        return self._deliver(result, claim_next=claim_next)

    def deliver(self, result: TaskResult) -> bool:
        """Send a result; True when the API has it (or rejected it for good), False to try again later."""
        return self._deliver(result, claim_next=False)[0]

    def _deliver(self, result: TaskResult, *, claim_next: bool) -> tuple[bool, Claim | None]:
        """``deliver``; with ``claim_next`` the same call claims this runner's next task: (delivered, next claim)."""
        path = self.path(result)
        with self.delivering:
            if path.name not in self.unsaved and not path.exists():
                return True, None  # delivered meanwhile by another thread
            return self._send(result, claim_next)

    def _send(self, result: TaskResult, claim_next: bool) -> tuple[bool, Claim | None]:
        following = None
        fields: dict[str, Any] = {"output": result.output, "exit_code": result.exit_code,
                                  "decision_prompt": result.decision_prompt,
                                  "error_category": result.error_category, "error_summary": result.error_summary,
                                  "evidence": result.evidence}
        fields.update({k: v for k, v in (("agent", result.agent), ("model", result.model), ("tokens_in",
                      result.tokens_in), ("tokens_out", result.tokens_out), ("cost_usd", result.cost_usd))
                       if v is not None})  # the run's usage (usage_meter); an older API is sent no new field
        try:
            if claim_next:  # it claims at once (no wait): its lease counts from when it was sent
                sent = time.monotonic()
                _, task = self.client.finish_and_claim(result.task_id, result.claim_token, result.status,
                                                       runner_id=self.runner_id, types=self.types, **fields)
                following = Claim(task, sent) if task is not None else None
            else:
                self.client.finish(result.task_id, result.claim_token, result.status, **fields)
        except (ApiConflict, ApiNotFound) as exc:
            log.warning("task %s: result dropped, the claim is no longer ours: %s", result.task_id, exc.detail)
        except ApiUnavailable as exc:
            log.warning("task %s: API unavailable, result kept in the outbox (%s)", result.task_id, exc.detail)
            return False, None
        except ApiError as exc:
            log.error("task %s: result rejected: %s", result.task_id, exc)
        else:
            log.info("task %s: %s (exit %s)", result.task_id, result.status, result.exit_code)
        path = self.path(result)
        with self.lock:
            self.unsaved.pop(path.name, None)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # a read-only disk: the next delivery of it is answered as already recorded
            self.note(f"outbox file {path.name} cannot be removed: {exc}")
        return True, following

    def flush(self) -> int:
        """Deliver every stored result (and those only in memory); returns how many are still waiting."""
        waiting = 0
        with self.lock:
            results = list(self.unsaved.values())
        for path in sorted(self.folder.glob("task_*.json")):
            try:
                results.append(TaskResult(**json.loads(path.read_text())))
            except FileNotFoundError:
                continue  # delivered by its slot since the folder was listed
            except (ValueError, TypeError) as exc:
                log.error("outbox file %s is unreadable (%s); moved aside", path.name, exc)
                path.rename(path.with_suffix(".bad"))
        for result in results:
            if not self.deliver(result):
                waiting += 1
        return waiting

    def save_unsaved(self) -> None:
        """On the way out: results that are only in memory get one more try at the outbox (the disk may have space
        again); what still cannot be written is named in the log, the only trace left of it."""
        with self.lock:
            results = list(self.unsaved.values())
        for result in results:
            try:
                write_json_atomic(self.path(result), asdict(result))
            except OSError as exc:
                log.error("task %s: result lost (run %s, %s, exit %s): neither the API nor the outbox took it (%s)",
                          result.task_id, result.claim_token, result.status, result.exit_code, exc)
