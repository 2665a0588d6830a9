"""The client's steering calls: retention, pause, resume, cancel and type policies (an operator's acts, each safe
to repeat), bulk acts, and the audit trail (read it; note a restart requested on a host)."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from coherence_network.contract import PauseChange, PauseList, Task
from coherence_network.contract_costs import CostCaps, CostCapsChange, Spend
from coherence_network.contract_steering import AuditPage, BulkPreview, BulkResult, TypePolicyChange, TypePolicyList
from coherence_network.endpoints import (
    AUDIT,
    BULK_ACT,
    BULK_PREVIEW,
    CANCEL,
    CAPS,
    NOTE_RESTART,
    PAUSE,
    PAUSES,
    POLICIES,
    PRUNE,
    RESUME,
    SET_CAPS,
    SET_POLICY,
    SPEND,
    Endpoint,
    body_of,
    present,
)
from coherence_network.request_bodies import (
    BulkActRequest,
    BulkFilter,
    BulkPreviewRequest,
    CancelRequest,
    CostCapsRequest,
    PauseRequest,
    PruneRequest,
    RestartNote,
    ResumeRequest,
    TypePolicyRequest,
)

BULK_ACT_TIMEOUT = 600.0  # seconds a bulk act may take to answer


class SteeringCalls:
    """Mixed into ApiClient, which sends through its ``call``."""

    def call(self, endpoint: Endpoint, body: BaseModel | None = None, *, timeout: float | None = None,
             retries: int | None = None, keyed: bool = False, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, **path: Any) -> httpx.Response:
        raise NotImplementedError  # ApiClient.call

    def prune(self, *, dry_run: bool = False) -> dict[str, int | bool]:
        """One retention pass over the store by the API (``dry_run``: counted only): {dry_run, tasks,
        monitor_issues, runners, audit}. Safe to repeat, so retried like a read."""
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

    def bulk_preview(self, action: str, **task_filter: Any) -> BulkPreview:
        """How many tasks ``action`` (cancel, retry) would take by ``task_filter`` (status, type, created_before,
        created_after, text), the newest few, and the token one act needs. Changes nothing, so retried."""
        body = body_of(BulkPreviewRequest, action=action, filter=body_of(BulkFilter, **task_filter))
        return BulkPreview.model_validate(self.call(BULK_PREVIEW, body, keyed=True).json())

    def bulk_act(self, action: str, token: str, reason: str, **task_filter: Any) -> BulkResult:
        """Do what the preview of the same action and filter counted. A token acts once (a repeat answers the
        first act's counts), so a retry after a lost answer is safe. Each task is its own move (PostgreSQL: about
        2.5 ms apiece), so the answer may take minutes for a hundred thousand: the timeout is BULK_ACT_TIMEOUT."""
        body = body_of(BulkActRequest, action=action, filter=body_of(BulkFilter, **task_filter), token=token,
                       reason=reason)
        answer = self.call(BULK_ACT, body, keyed=True, timeout=BULK_ACT_TIMEOUT)
        return BulkResult.model_validate(answer.json())

    def audit(self, *, limit: int = 50, before_id: int | None = None, actor: str | None = None,
              channel: str | None = None, action: str | None = None, task_id: int | None = None,
              since: str | None = None, until: str | None = None) -> AuditPage:
        """A page of the audit trail, newest first (every filter given must match; ``since``/``until`` ISO 8601);
        the next page is ``before_id=page.next_before_id``."""
        params = present({"limit": limit, "before_id": before_id, "actor": actor, "channel": channel,
                          "action": action, "task_id": task_id, "since": since, "until": until})
        return AuditPage.model_validate(self.call(AUDIT, params=params).json())

    def note_restart(self, component: str, reason: str, host: str) -> bool:
        """Put a restart requested on ``host`` in the audit trail (as this client's actor); whether it was recorded.
        Sent once: a retry after a lost answer could record it twice."""
        body = body_of(RestartNote, component=component, reason=reason, host=host)
        return bool(self.call(NOTE_RESTART, body, retries=0).json()["recorded"])

    def cancel(self, task_id: int, reason: str, *, by: str | None = None) -> Task:
        """Cancel a task (``by``: the actor, else this client's own); a repeat returns the task as it is, so it is
        retried. A running task stays running until its runner stops it (``cancel_requested_at`` is set)."""
        body = body_of(CancelRequest, reason=reason, by=by)
        return Task.model_validate(self.call(CANCEL, body, keyed=True, task_id=task_id).json())

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

    def caps(self, *, retries: int | None = None) -> CostCaps:
        """The cost caps in force (US dollars; 0 = none), with their defaults and who set them."""
        return CostCaps.model_validate(self.call(CAPS, retries=retries).json())

    def set_caps(self, *, by: str | None = None, **caps: float) -> CostCapsChange:
        """Set cost caps (task, item, day: US dollars, 0 = none); the same value again changes nothing, so it is
        retried."""
        return CostCapsChange.model_validate(self.call(SET_CAPS, body_of(CostCapsRequest, by=by, **caps),
                                                       keyed=True).json())

    def spend(self, *, item: str | None = None, days: int = 7) -> Spend:
        """What agents reported using: today against the day cap, per agent, per day, and per ``item``."""
        return Spend.model_validate(self.call(SPEND, params=present({"item": item, "days": days})).json())
