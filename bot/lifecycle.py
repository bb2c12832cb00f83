"""The request state machine: which transitions are legal, and the audit event of each."""

from __future__ import annotations

from typing import Any

from bot.errors import IllegalTransition
from bot.models import (
    Approval,
    AuditEvent,
    EventKind,
    RequestRecord,
    State,
    StepResult,
    utcnow,
)

TRANSITIONS: dict[State, frozenset[State]] = {
    "received": frozenset({"unplanned", "planned"}),
    "planned": frozenset({"denied", "awaiting_approval", "approved"}),
    "awaiting_approval": frozenset({"approved", "rejected", "expired", "cancelled"}),
    # approved → failed: a job that died every time it was delivered (dead-lettered).
    "approved": frozenset({"executing", "cancelled", "failed"}),
    "executing": frozenset({"succeeded", "failed"}),
}

# Events that record progress without leaving the state: one approval of several, and
# each step starting and finishing.
STAY_EVENTS: dict[State, frozenset[EventKind]] = {
    "awaiting_approval": frozenset({"approval.granted"}),
    "executing": frozenset({"step.started", "step.finished"}),
}

DESCRIPTIONS: dict[State, str] = {
    "received": "received",
    "unplanned": "could not be planned",
    "planned": "planned",
    "denied": "denied by policy",
    "awaiting_approval": "awaiting approval",
    "approved": "approved",
    "rejected": "rejected",
    "expired": "expired without approval",
    "cancelled": "cancelled",
    "executing": "running",
    "succeeded": "finished successfully",
    "failed": "failed",
}


def advance(
    record: RequestRecord,
    state: State,
    kind: EventKind,
    actor: str,
    *,
    approval: Approval | None = None,
    step: StepResult | None = None,
    reason: str | None = None,
    tokens: int | None = None,
    **changes: Any,
) -> tuple[RequestRecord, AuditEvent]:
    """The record after one legal transition, and the audit event that describes it.

    Raises ``IllegalTransition`` (changing nothing) when ``record`` may not go to
    ``state``; approving a rejected request or executing twice is refused, not repaired.
    """
    if state == record.state:
        if kind not in STAY_EVENTS.get(state, frozenset()):
            raise IllegalTransition(
                f"request {record.id} is already {DESCRIPTIONS[state]}; nothing changed"
            )
    elif state not in TRANSITIONS.get(record.state, frozenset()):
        raise IllegalTransition(
            f"request {record.id} is {DESCRIPTIONS[record.state]} and cannot become"
            f" {DESCRIPTIONS[state]}; nothing changed"
        )
    if reason is not None:
        changes["reason"] = reason
    updated = record.model_copy(update={"state": state, "updated_at": utcnow(), **changes})
    event = AuditEvent(
        kind=kind,
        request_id=record.id,
        actor=actor,
        state=state,
        plan_hash=updated.plan.plan_hash if updated.plan else None,
        decisions=updated.decisions if kind in ("request.planned",) else (),
        approval=approval,
        step=step,
        reason=reason,
        tokens=tokens,
    )
    return updated, event
