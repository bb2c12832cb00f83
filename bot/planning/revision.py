"""Revision: a new plan for what is left after a step failed (observation and feedback).

A failed step's error goes back to the planner as data, and what it proposes is a new
plan: a new ``plan_hash``, no approval carried over, every step decided by policy again.
The steps that succeeded are not run again unless the revision proposes them itself;
the revised plan holds only the work left, and the plans before it stay on the record
(``RequestRecord.previous``) with their decisions, approvals and results.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from bot.errors import LamError
from bot.execution import StepFailure
from bot.lifecycle import advance
from bot.models import AuditEvent, Decision, Plan, PlanAttempt, RequestRecord
from bot.planning import Planner
from bot.planning._usage import metered
from connectors import Catalog

log = structlog.get_logger("lam.planning.revision")

SYSTEM_ACTOR = "lam"
MAX_REPORT_CHARS = 4000
"""Characters of a failure shown to the model: enough for an error, not a whole log."""
OUTPUT_TAIL_CHARS = 2000
"""The end of a failed step's output, where the error usually is."""


def refusal(record: RequestRecord, failure: StepFailure, *, limit: int) -> str | None:
    """The reason to fail ``record`` without a revision, or ``None`` to ask for one.

    Only a step's own failure is revised: never one policy stopped, one whose outcome is
    unknown, or a dry run (which changes nothing, so there is nothing to work around).
    """
    assert record.plan is not None
    if not failure.revisable or record.plan.dry_run or limit <= 0:
        return failure.reason
    if record.revisions >= limit:
        return (
            f"{failure.reason}; not revised again: the plan was revised {record.revisions}"
            " time(s), the most one request may be"
        )
    return None


@dataclass(frozen=True)
class Proposal:
    """What the planner answered when asked to revise."""

    plan: Plan | None
    """The revised plan, not yet decided by policy; ``None``: the request fails."""
    reason: str
    """Why the request fails when there is no plan: the step's failure, and why not revised."""
    tokens: int | None
    """Model tokens the revision used, for its audit event."""


async def propose(
    planner: Planner, record: RequestRecord, catalog: Catalog, failure: StepFailure
) -> Proposal:
    """Ask ``planner`` to revise ``record``'s plan, offering only ``catalog``'s actions.

    A planner that cannot revise, declines, fails, or even crashes leaves a reason to fail
    the request with, never a request stuck running.
    """
    assert record.plan is not None and record.intent is not None
    plan: Plan | None = None
    reason = failure.reason
    with metered() as usage:
        try:
            plan = await planner.revise(
                record.intent,
                catalog,
                record.plan,
                failure_report(failure),
                succeeded=succeeded(record),
            )
        except LamError as declined:
            reason = f"{failure.reason}; not revised: {declined}"
        except Exception as crash:  # a planner bug must not leave the request running
            log.exception("revision.crashed")
            reason = f"{failure.reason}; not revised: the planner crashed ({crash!r})"
    if plan is not None:
        log.info("revision.proposed", failure=failure.reason, revision=record.revisions + 1)
    return Proposal(plan, reason, usage.total_tokens or None)


def failure_report(failure: StepFailure) -> str:
    """What the planner is told about the failed step: its error and the end of its output."""
    report = failure.reason
    output = failure.result.output.strip()
    if output:
        report += f"\nits output, the last {OUTPUT_TAIL_CHARS} characters at most:\n"
        report += output[-OUTPUT_TAIL_CHARS:]
    if len(report) > MAX_REPORT_CHARS:
        report = report[: MAX_REPORT_CHARS - 1] + "…"
    return report


def succeeded(record: RequestRecord) -> list[str]:
    """The ids of the steps of the current plan that ran and succeeded."""
    return [result.step_id for result in record.results if result.status == "succeeded"]


def revised(
    record: RequestRecord,
    plan: Plan,
    decisions: tuple[Decision, ...],
    failure: StepFailure,
    *,
    tokens: int | None = None,
) -> tuple[RequestRecord, AuditEvent]:
    """``record`` planned again with ``plan``; the failed plan moves to ``previous``."""
    assert record.plan is not None
    attempt = PlanAttempt(
        plan=record.plan,
        decisions=record.decisions,
        approvals=record.approvals,
        results=record.results,
        failure=failure.reason,
    )
    number = record.revisions + 1
    return advance(
        record,
        "planned",
        "request.revised",
        SYSTEM_ACTOR,
        note=failure.reason,
        tokens=tokens,
        plan=plan.model_copy(update={"revision": number}),
        decisions=decisions,
        approvals=(),
        results=(),
        revisions=number,
        previous=(*record.previous, attempt),
    )
