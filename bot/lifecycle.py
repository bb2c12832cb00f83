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
    "received": frozenset({"unplanned", "planned", "clarifying"}),
    # clarifying → received: the answer is in, and planning starts again.
    "clarifying": frozenset({"received", "cancelled", "expired"}),
    "planned": frozenset({"denied", "awaiting_approval", "approved"}),
    "awaiting_approval": frozenset({"approved", "rejected", "expired", "cancelled"}),
    # approved → failed: a job that died every time it was delivered (dead-lettered).
    "approved": frozenset({"executing", "cancelled", "failed"}),
    # executing → planned: a step failed and the plan was revised; it is decided again.
    "executing": frozenset({"succeeded", "failed", "planned"}),
}

# Events that record progress without leaving the state: one approval of several, and
# each step starting and finishing.
STAY_EVENTS: dict[State, frozenset[EventKind]] = {
    "awaiting_approval": frozenset({"approval.granted"}),
    "executing": frozenset({"step.started", "step.finished"}),
}

DESCRIPTIONS: dict[State, str] = {
    "received": "received",
    "clarifying": "waiting for an answer",
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
    note: str | None = None,
    tokens: int | None = None,
    **changes: Any,
) -> tuple[RequestRecord, AuditEvent]:
    """The record after one legal transition, and the audit event that describes it.

    ``reason`` becomes the request's reason and the event's; ``note`` is the event's
    alone (a question, an answer, the failure a plan was revised after), for what
    explains a step of the way rather than where the request ended.

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
    now = utcnow()
    if state != record.state:
        # Fields that belong to one state are set on entering it and cleared on leaving
        # it here, in one place, so no way in or out of that state can forget them.
        if state == "awaiting_approval":
            changes.setdefault("awaiting_since", now)
        elif record.state == "awaiting_approval":
            changes.setdefault("awaiting_since", None)
        if record.state == "clarifying":
            changes.setdefault("question", None)
    updated = record.model_copy(update={"state": state, "updated_at": now, **changes})
    event = AuditEvent(
        kind=kind,
        request_id=record.id,
        actor=actor,
        state=state,
        plan_hash=updated.plan.plan_hash if updated.plan else None,
        decisions=updated.decisions if kind in ("request.planned", "request.revised") else (),
        approval=approval,
        step=step,
        reason=reason if reason is not None else note,
        tokens=tokens,
    )
    return updated, event
