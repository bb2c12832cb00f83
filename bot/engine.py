"""The engine wires the layers: intent → plan → policy → approvals → execution → audit.

Fronts (console, Slack) only collect input and render records; everything that decides
or changes something happens here, and every change is one atomic store write with its
audit event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from bot import approvals, metrics
from bot.audit import Redactor, verify_store
from bot.errors import (
    ConcurrentUpdate,
    DuplicateRequest,
    IllegalTransition,
    InvalidInput,
    LamError,
    NoPlan,
    PolicyDenied,
    UnknownAction,
)
from bot.execution import ExecutionOptions, StepFailure, execute
from bot.intent import understand
from bot.jobs import JobQueue
from bot.lifecycle import DESCRIPTIONS, advance
from bot.models import (
    AuditEvent,
    EventKind,
    Intent,
    Request,
    RequestRecord,
    State,
    StepResult,
    utcnow,
)
from bot.planning import Planner, clarification, governed, revision
from bot.planning.llm import ClarificationNeeded, metered
from bot.policy import Policy
from bot.store import Store
from connectors import Catalog

log = structlog.get_logger("lam.engine")

SYSTEM_ACTOR = "lam"


@dataclass(frozen=True)
class EngineOptions:
    environments: tuple[str, ...] = ("dev", "staging", "prod")
    default_environment: str = "dev"
    approval_ttl: timedelta = timedelta(hours=1)
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    dedupe_ttl: timedelta = timedelta(hours=1)
    """How long a dedupe key passed to ``Engine.ask`` keeps a second delivery out."""
    max_clarifications: int = 3
    """Questions the planner may ask about one request; 0 ends a question-asking request
    as ``unplanned``. A question waits for its answer as long as ``approval_ttl``."""
    max_revisions: int = 2
    """Times a request's plan may be revised after a failed step; 0 never revises."""


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        policy: Policy,
        catalog: Catalog,
        planner: Planner,
        options: EngineOptions | None = None,
        redactor: Redactor | None = None,
        jobs: JobQueue | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.catalog = catalog
        self.planner = planner
        self.options = options or EngineOptions()
        self.redactor = redactor or Redactor()
        self.jobs = jobs
        """Where approved requests go; ``None`` runs them in the approving process."""
        self.observers: list[Callable[[RequestRecord], None]] = []
        """Called with each stored change; must return at once and never raise (a front
        schedules its own work)."""

    async def ask(self, request: Request, *, dedupe_key: str | None = None) -> RequestRecord:
        """Record a request, plan it, decide each step, and run it if nothing needs approval.

        Returns the request as it ended up: ``clarifying`` (the planner's question in
        ``question``; see ``answer``), ``unplanned`` (with the reason and the closest
        actions), ``denied``, ``awaiting_approval``, or finished.

        ``dedupe_key`` names the delivery (a Slack event id): when another request holds
        it (for ``EngineOptions.dedupe_ttl``), this one raises ``DuplicateRequest`` naming
        that request, and nothing is stored, audited or run.
        """
        with bound_contextvars(request_id=request.id, requester=request.requester):
            return await self._ask(self.redactor.model(request), dedupe_key)

    async def _ask(self, request: Request, dedupe_key: str | None) -> RequestRecord:
        if dedupe_key is not None:
            owner = await self.store.claim(dedupe_key, request.id, self.options.dedupe_ttl)
            if owner != request.id:
                log.info("request.duplicate", dedupe_key=dedupe_key, owner=owner)
                raise DuplicateRequest(dedupe_key, owner)
        record = await self._store_new(RequestRecord(request=request))
        try:
            intent = understand(
                request,
                environments=self.options.environments,
                default_environment=self.options.default_environment,
            )
        except InvalidInput as error:
            return await self._unplanned(record, error)
        return await self._plan_and_decide(record, intent)

    async def answer(
        self, request_id: str, answerer: str, text: str, *, groups: Sequence[str] = ()
    ) -> RequestRecord:
        """Answer the planner's question about a request; the same request is planned again.

        Only the requester may answer (else ``PolicyDenied``), only while the request is
        ``clarifying`` (else ``IllegalTransition``); a refused answer changes nothing.
        The answer and every earlier one reach the model as data, and the new plan meets
        policy like any other. Returns the request as it ended up, as ``ask`` does; it
        may be ``clarifying`` again.

        ``groups``: the answerer's directory groups now. Planning keeps the groups the
        requester had when they asked, as every later check of this request does.
        """
        with bound_contextvars(request_id=request_id, answerer=answerer):
            while True:
                record = await self.show(request_id)
                answered, event = clarification.answer(
                    record, answerer, text, environments=self.options.environments, now=utcnow()
                )
                try:
                    record = await self._save(record, answered, [event])
                    break
                except ConcurrentUpdate:
                    # Answered or cancelled meanwhile: decide again on what is stored.
                    continue
            assert record.intent is not None
            log.info("request.answered", answers=len(record.conversation))
            return await self._plan_and_decide(record, record.intent)

    async def _plan_and_decide(self, record: RequestRecord, intent: Intent) -> RequestRecord:
        """Plan a ``received`` request; then ask, refuse, or apply policy's verdict."""
        request = record.request
        with metered() as usage:
            try:
                proposed = await governed.plan(
                    self.planner, self.policy, self.catalog, intent, request.groups
                )
            except ClarificationNeeded as asked:
                log.info("request.clarifying", question=asked.question)
                clarifying, event = clarification.ask(
                    record,
                    intent,
                    asked.question,
                    limit=self.options.max_clarifications,
                    expires_at=utcnow() + self.options.approval_ttl,
                    tokens=usage.total_tokens or None,
                )
                return await self._save(record, clarifying, [event])
            except (InvalidInput, NoPlan) as error:
                return await self._unplanned(record, error, tokens=usage.total_tokens or None)
        plan = self.redactor.model(proposed)
        planned, planned_event = advance(
            record,
            "planned",
            "request.planned",
            SYSTEM_ACTOR,
            tokens=usage.total_tokens or None,
            intent=intent,
            plan=plan,
            decisions=governed.decide(self.policy, request, plan),
        )
        return await self._settle(record, planned, planned_event)

    async def _unplanned(
        self, record: RequestRecord, error: LamError, *, tokens: int | None = None
    ) -> RequestRecord:
        suggestions = error.suggestions if isinstance(error, NoPlan | UnknownAction) else []
        log.info("request.unplanned", reason=str(error))
        return await self._commit(
            record,
            "unplanned",
            "request.unplanned",
            actor=SYSTEM_ACTOR,
            reason=str(error),
            tokens=tokens,
            suggestions=tuple(suggestions),
        )

    async def _settle(
        self, before: RequestRecord, planned: RequestRecord, planned_event: AuditEvent
    ) -> RequestRecord:
        """Store a ``planned`` request with policy's verdict; run or queue it if approved."""
        # The plan, its verdict and (when nothing needs approval) the start of execution
        # are stored in one write: each has its own audit event, and none can exist
        # without the others.
        outcome, outcome_event = approvals.verdict(
            planned, now=utcnow(), ttl=self.options.approval_ttl
        )
        events = [planned_event, outcome_event]
        if outcome.state == "approved" and self.jobs is None:
            outcome, executing_event = advance(
                outcome, "executing", "request.executing", SYSTEM_ACTOR
            )
            events.append(executing_event)
        record = await self._save(before, outcome, events)
        if record.state == "executing":
            return await self._run(record)
        if record.state == "approved":
            return await self._dispatch(record)
        return record

    async def approve(
        self, request_id: str, approver: str, *, groups: Sequence[str] = ()
    ) -> RequestRecord:
        """One approval; runs the request when it was the last one needed.

        ``groups``: the approver's directory groups (``group:HANDLE``) at the click.
        """
        with bound_contextvars(request_id=request_id, approver=approver):
            record = await self._decide(
                request_id, approver, approve=True, reason=None, groups=groups
            )
            if record.state == "approved":
                return await self._dispatch(record)
            return record

    async def _dispatch(self, record: RequestRecord) -> RequestRecord:
        """Run an approved request here and now, or queue it for a worker."""
        if self.jobs is None:
            return await self.execute(record.id)
        await self.jobs.submit(record.id)
        return record

    async def resubmit_approved(self) -> int:
        """Queue again every approved request not yet running; for a worker starting up.

        Approval and queueing are two writes: a crash between them leaves a request
        approved but unqueued. Queueing it twice is harmless (only one run can start).
        """
        if self.jobs is None:
            return 0
        waiting = await self.store.history(states=frozenset({"approved"}), limit=10_000)
        for record in waiting:
            await self.jobs.submit(record.id)
        return len(waiting)

    async def abandon(self, request_id: str, reason: str) -> RequestRecord:
        """End a request whose execution keeps dying: it fails, and a person decides."""
        while True:
            record = await self.store.get(request_id)
            if record.state not in ("approved", "executing"):
                return record
            results = tuple(
                r.model_copy(update={"status": "interrupted", "error": reason})
                if r.status == "running"
                else r
                for r in record.results
            )
            try:
                return await self._commit(
                    record, "failed", "request.failed", reason=reason, results=results
                )
            except ConcurrentUpdate:
                continue

    async def reject(
        self, request_id: str, approver: str, reason: str, *, groups: Sequence[str] = ()
    ) -> RequestRecord:
        return await self._decide(request_id, approver, approve=False, reason=reason, groups=groups)

    async def cancel(
        self, request_id: str, actor: str, *, groups: Sequence[str] = ()
    ) -> RequestRecord:
        """Cancel a request that has not started running; the requester or an approver may.

        A request waiting for an answer has no plan to approve: only its requester may.
        """
        while True:
            record = await self.show(request_id)
            if actor != record.request.requester and not approvals.may_approve_all(
                self.policy, actor, record, groups
            ):
                raise PolicyDenied(
                    f"only the requester or an approver may cancel request {request_id}"
                )
            try:
                return await self._commit(
                    record,
                    "cancelled",
                    "request.cancelled",
                    actor=actor,
                    reason=f"cancelled by {actor}",
                )
            except ConcurrentUpdate:
                continue

    async def show(self, request_id: str) -> RequestRecord:
        """The request as stored, after expiring it if its approval window has closed."""
        record = await self.store.get(request_id)
        return await self._expire_if_due(record)

    async def history(
        self, *, requester: str | None = None, limit: int = 20
    ) -> list[RequestRecord]:
        records = await self.store.history(requester=requester, limit=limit)
        return [await self._expire_if_due(record) for record in records]

    async def execute(self, request_id: str) -> RequestRecord:
        """Run an approved request; a request already running elsewhere is left alone."""
        with bound_contextvars(request_id=request_id):
            return await self._execute(request_id)

    async def _execute(self, request_id: str) -> RequestRecord:
        record = await self.store.get(request_id)
        if record.state == "approved":
            try:
                record = await self._commit(
                    record, "executing", "request.executing", actor=SYSTEM_ACTOR
                )
            except ConcurrentUpdate:
                # Someone else started it: running it here too would run it twice.
                return await self.store.get(request_id)
        elif record.state != "executing":
            raise IllegalTransition(
                f"request {request_id} is {DESCRIPTIONS[record.state]}; it cannot be run"
            )
        return await self._run(record)

    async def _run(self, record: RequestRecord) -> RequestRecord:
        record, failure = await execute(
            record,
            catalog=self.catalog,
            guard=lambda current, step: approvals.recheck(self.policy, current, step),
            commit=self._commit,
            options=self.options.execution,
        )
        if failure is None:
            return await self._commit(record, "succeeded", "request.succeeded")
        return await self._revise_or_fail(record, failure)

    async def _revise_or_fail(self, record: RequestRecord, failure: StepFailure) -> RequestRecord:
        """Have the plan revised after a failed step, within the bound; else fail the request.

        The revision is a new plan: policy decides it again and, where a step needs
        approval, it waits for approvals of its own. When the planner cannot or will not
        revise, the request fails with the step's failure.
        """
        final = revision.refusal(record, failure, limit=self.options.max_revisions)
        if final is not None:
            return await self._commit(record, "failed", "request.failed", reason=final)
        assert record.intent is not None
        catalog = governed.permitted(
            self.policy, self.catalog, record.intent, record.request.groups
        )
        proposal = await revision.propose(self.planner, record, catalog, failure)
        if proposal.plan is None:
            return await self._commit(
                record, "failed", "request.failed", reason=proposal.reason, tokens=proposal.tokens
            )
        plan = self.redactor.model(proposal.plan)
        decisions = governed.decide(self.policy, record.request, plan)
        planned, event = revision.revised(record, plan, decisions, failure, tokens=proposal.tokens)
        return await self._settle(record, planned, event)

    async def verify_audit(self) -> int:
        """The number of audit events; raises ``AuditChainBroken`` at the first bad one."""
        return await verify_store(self.store)

    async def aclose(self) -> None:
        await self.planner.aclose()
        for connector in self.catalog.connectors:
            await connector.aclose()
        if self.jobs is not None:
            await self.jobs.aclose()
        await self.store.aclose()

    async def _decide(
        self,
        request_id: str,
        approver: str,
        *,
        approve: bool,
        reason: str | None,
        groups: Sequence[str] = (),
    ) -> RequestRecord:
        while True:
            record = await self.show(request_id)
            updated, events = approvals.decide(
                record,
                approver,
                self.policy,
                approve=approve,
                reason=reason,
                now=utcnow(),
                groups=groups,
            )
            try:
                return await self._save(record, updated, events)
            except ConcurrentUpdate:
                # Another approver or process changed the request: decide again on what
                # is stored now, so exactly one legal transition wins.
                continue

    async def _expire_if_due(self, record: RequestRecord) -> RequestRecord:
        while (due := _expiry(record)) is not None:
            updated, event = due
            try:
                return await self._save(record, updated, [event])
            except ConcurrentUpdate:
                record = await self.store.get(record.id)
        return record

    async def _commit(
        self,
        record: RequestRecord,
        state: State,
        kind: EventKind,
        *,
        actor: str = SYSTEM_ACTOR,
        step: StepResult | None = None,
        reason: str | None = None,
        tokens: int | None = None,
        **changes: Any,
    ) -> RequestRecord:
        updated, event = advance(
            record, state, kind, actor, step=step, reason=reason, tokens=tokens, **changes
        )
        return await self._save(record, updated, [event])

    async def _store_new(self, record: RequestRecord) -> RequestRecord:
        """Store a request as ``received``: there is no state before it to advance from."""
        event = AuditEvent(
            kind="request.received",
            request_id=record.id,
            actor=record.request.requester,
            state=record.state,
        )
        created = await self.store.create(record, [event])
        metrics.AUDIT_EVENTS.labels(event.kind).inc()
        return created

    async def _save(
        self, before: RequestRecord, after: RequestRecord, events: Sequence[AuditEvent]
    ) -> RequestRecord:
        saved = await self.store.save(
            self.redactor.model(after),
            before.version,
            [self.redactor.model(event) for event in events],
        )
        metrics.observe_change(before, saved, events)
        for observe in self.observers:
            observe(saved)
        return saved


def _expiry(record: RequestRecord) -> tuple[RequestRecord, AuditEvent] | None:
    """The transition to ``expired`` when an approval or an answer has waited too long."""
    now = utcnow()
    return approvals.expire_if_due(record, now) or clarification.expire_if_due(record, now)
