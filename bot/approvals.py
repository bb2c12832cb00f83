"""Approvals: who may approve a request, and what each approval or rejection changes.

An approval is bound to the ``plan_hash`` it approved, so a plan that changes after
approval is no longer approved. The requester never approves their own request, and the
approver is authorised again by policy at the moment they decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from bot.errors import IllegalTransition, InvalidInput, PolicyDenied
from bot.lifecycle import DESCRIPTIONS, advance
from bot.models import Approval, AuditEvent, RequestRecord, Step
from bot.policy import Policy
from bot.text import normalise

MAX_REASON_CHARS = 500


class ApprovalExpired(IllegalTransition):
    """The approval window closed; the request has to be asked for again."""


def approvals_needed(record: RequestRecord) -> int:
    """How many distinct approvers the plan needs, by the strictest step."""
    return max(
        (d.approvals_required for d in record.decisions if d.decision == "needs_approval"),
        default=0,
    )


def valid_approvals(record: RequestRecord) -> list[Approval]:
    """Approvals that count: of the current plan, by distinct approvers, not the requester."""
    if record.plan is None:
        return []
    plan_hash = record.plan.plan_hash
    seen: set[str] = set()
    valid: list[Approval] = []
    for approval in record.approvals:
        if (
            approval.verdict == "approved"
            and approval.plan_hash == plan_hash
            and approval.approver != record.request.requester
            and approval.approver not in seen
        ):
            seen.add(approval.approver)
            valid.append(approval)
    return valid


def verdict(
    planned: RequestRecord, *, now: datetime, ttl: timedelta
) -> tuple[RequestRecord, AuditEvent]:
    """Denied if any step is denied, else awaiting approval if any needs it, else approved."""
    denied = [d for d in planned.decisions if d.decision == "deny"]
    if denied:
        first = denied[0]
        return advance(
            planned,
            "denied",
            "request.denied",
            "lam",
            reason=f"step {first.step_id} ({first.action}) is denied: {first.rule}",
        )
    if any(d.decision == "needs_approval" for d in planned.decisions):
        return advance(
            planned, "awaiting_approval", "request.awaiting_approval", "lam", expires_at=now + ttl
        )
    return advance(planned, "approved", "request.approved", "lam")


def recheck(policy: Policy, record: RequestRecord, step: Step) -> str | None:
    """Why ``step`` may not run now after all (policy changed since approval), or ``None``."""
    decision = policy.decide(record.request.requester, step, groups=record.request.groups)
    if decision.decision == "deny":
        return f"policy no longer allows this step: {decision.rule}"
    if decision.decision == "needs_approval":
        have = len(valid_approvals(record))
        need = max(1, decision.approvals_required)
        if have < need:
            return (
                f"this step now needs {need} approval(s) and has {have}: {decision.rule}; ask again"
            )
    return None


def may_approve_all(
    policy: Policy, subject: str, record: RequestRecord, groups: Sequence[str] = ()
) -> bool:
    """Whether ``subject`` may approve every step of the plan (a request without one: no)."""
    if record.plan is None:
        return False
    return all(policy.may_approve(subject, step, groups=groups)[0] for step in record.plan.steps)


def expire_if_due(record: RequestRecord, now: datetime) -> tuple[RequestRecord, AuditEvent] | None:
    """The transition to ``expired`` when the approval window has closed, else ``None``."""
    if record.state != "awaiting_approval" or record.expires_at is None:
        return None
    if now < record.expires_at:
        return None
    return advance(
        record,
        "expired",
        "request.expired",
        "lam",
        reason=f"no approval before {record.expires_at:%Y-%m-%d %H:%M:%S} UTC",
    )


def decide(
    record: RequestRecord,
    approver: str,
    policy: Policy,
    *,
    approve: bool,
    reason: str | None,
    now: datetime,
    groups: Sequence[str] = (),
) -> tuple[RequestRecord, list[AuditEvent]]:
    """Apply one approver's approval or rejection to ``record``.

    Returns the new record and its audit events; raises (changing nothing) when the
    request is not awaiting approval, the window has closed, the approver is the
    requester, has approved already, or may not approve every step that needs it.
    """
    if record.state != "awaiting_approval":
        raise IllegalTransition(
            f"request {record.id} is {DESCRIPTIONS[record.state]}, not awaiting approval;"
            " nothing changed"
        )
    if record.expires_at is not None and now >= record.expires_at:
        raise ApprovalExpired(
            f"request {record.id} expired at {record.expires_at:%Y-%m-%d %H:%M:%S} UTC; ask again"
        )
    if not approver.startswith("user:"):
        # Approvals are made by people. A role or group never approves, so nobody can
        # approve through a group they share with the requester.
        raise PolicyDenied(f"{approver!r} is not a person; only user: subjects approve")
    if approver == record.request.requester:
        raise PolicyDenied(f"you asked for request {record.id}; someone else must approve it")
    if any(a.approver == approver for a in record.approvals):
        raise IllegalTransition(f"you have already decided on request {record.id}")
    assert record.plan is not None  # awaiting_approval is only reached with a plan
    if approvals_needed(record) < 1:
        raise IllegalTransition(f"request {record.id} has no step that needs approval")

    rules: list[str] = []
    for decision in record.decisions:
        if decision.decision != "needs_approval":
            continue
        step = next(s for s in record.plan.steps if s.id == decision.step_id)
        allowed, rule = policy.may_approve(approver, step, groups=groups)
        if not allowed:
            raise PolicyDenied(
                f"{approver} may not approve {step.action!r} in {step.environment!r}: {rule}"
            )
        rules.append(rule)

    if not approve:
        if not reason or not (reason := normalise(reason, what="the reason").strip()):
            raise InvalidInput("a rejection needs a reason; say why, e.g. --reason 'not now'")
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidInput(f"the reason is longer than {MAX_REASON_CHARS} characters")

    approval = Approval(
        approver=approver,
        verdict="approved" if approve else "rejected",
        plan_hash=record.plan.plan_hash,
        rule="; ".join(dict.fromkeys(rules)),
        reason=reason,
        at=now,
    )
    approvals = (*record.approvals, approval)
    if not approve:
        rejected, event = advance(
            record,
            "rejected",
            "approval.rejected",
            approver,
            approval=approval,
            reason=reason,
            approvals=approvals,
        )
        return rejected, [event]

    granted, granted_event = advance(
        record,
        "awaiting_approval",
        "approval.granted",
        approver,
        approval=approval,
        approvals=approvals,
    )
    if len(valid_approvals(granted)) < approvals_needed(granted):
        return granted, [granted_event]
    approved, approved_event = advance(granted, "approved", "request.approved", approver)
    return approved, [granted_event, approved_event]
