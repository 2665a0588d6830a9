"""The client's steering calls: retention, pause and resume, type policies (an operator's acts, each safe to repeat)."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from coherence_network.contract import PauseChange, PauseList, TypePolicyChange, TypePolicyList
from coherence_network.endpoints import PAUSE, PAUSES, POLICIES, PRUNE, RESUME, SET_POLICY, Endpoint, body_of
from coherence_network.request_bodies import PauseRequest, PruneRequest, ResumeRequest, TypePolicyRequest


class SteeringCalls:
    """Mixed into ApiClient, which sends through its ``call``."""

    def call(self, endpoint: Endpoint, body: BaseModel | None = None, *, timeout: float | None = None,
             retries: int | None = None, keyed: bool = False, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, **path: Any) -> httpx.Response:
        raise NotImplementedError  # ApiClient.call

    def prune(self, *, dry_run: bool = False) -> dict[str, int | bool]:
        """One retention pass over the store by the API (``dry_run``: counted only): {dry_run, tasks,
        monitor_issues, runners}. Safe to repeat, so retried like a read."""
        answer: dict[str, int | bool] = self.call(PRUNE, body_of(PruneRequest, dry_run=dry_run), keyed=True).json()
        return answer

    def pause(self, by: str, reason: str, *, task_type: str | None = None) -> PauseChange:
        """Pause a task type (none: the whole pipeline); a repeat keeps the first pause, so it is retried."""
        body = body_of(PauseRequest, type=task_type, by=by, reason=reason)
        return PauseChange.model_validate(self.call(PAUSE, body, keyed=True).json())

    def resume(self, by: str, *, task_type: str | None = None) -> PauseChange:
        """Resume a task type (none: the whole pipeline); waiting claims wake. Safe to repeat."""
        return PauseChange.model_validate(self.call(RESUME, body_of(ResumeRequest, type=task_type, by=by),
                                                    keyed=True).json())

    def pauses(self) -> PauseList:
        """The scopes paused now: since when, by whom and why."""
        return PauseList.model_validate(self.call(PAUSES).json())

    def policies(self) -> TypePolicyList:
        """Every task type's policy (None where the default applies), its running count, and the defaults."""
        return TypePolicyList.model_validate(self.call(POLICIES).json())

    def set_policy(self, task_type: str, *, by: str | None = None, clear: list[str] | None = None,
                   **fields: float | None) -> TypePolicyChange:
        """Change a task type's policy: ``fields`` given (max_running, retry_delay_seconds,
        retry_max_delay_seconds, breaker_failures) take their values, those in ``clear`` go back to the default.
        Setting what is so changes nothing, so it is retried."""
        body = body_of(TypePolicyRequest, by=by, clear=clear or [], **fields)
        return TypePolicyChange.model_validate(self.call(SET_POLICY, body, keyed=True, task_type=task_type).json())
