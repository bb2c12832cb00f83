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
from bot.audit import Redactor, verify
from bot.errors import (
    ConcurrentUpdate,
    DuplicateRequest,
    IllegalTransition,
    InvalidInput,
    NoPlan,
    PolicyDenied,
    UnknownAction,
)
from bot.execution import ExecutionOptions, execute
from bot.intent import understand
from bot.jobs import JobQueue
from bot.lifecycle import DESCRIPTIONS, advance
from bot.models import (
    AuditEvent,
    EventKind,
    Intent,
    Plan,
    Request,
    RequestRecord,
    State,
    Step,
    StepResult,
    utcnow,
)
from bot.planning import Planner
from bot.planning.aliases import AliasPlanner
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
        self._explainer = AliasPlanner()
        self.jobs = jobs
        """Where approved requests go; ``None`` runs them in the approving process."""
        self.observers: list[Callable[[RequestRecord], None]] = []
        """Called with each stored change; must return at once and never raise (a front
        schedules its own work)."""

    async def ask(self, request: Request, *, dedupe_key: str | None = None) -> RequestRecord:
        """Record a request, plan it, decide each step, and run it if nothing needs approval.

        Returns the request as it ended up: ``unplanned`` (with the reason and the
        closest actions), ``denied``, ``awaiting_approval``, or finished.

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

        with metered() as usage:
            try:
                intent = understand(
                    request,
                    environments=self.options.environments,
                    default_environment=self.options.default_environment,
                )
                plan = self.redactor.model(await self._plan(intent, request.groups))
            except (InvalidInput, NoPlan, ClarificationNeeded) as error:
                # A question from the model ends this request; the person's answer, in
                # the same thread, arrives as a new request with the thread as context.
                suggestions = error.suggestions if isinstance(error, NoPlan | UnknownAction) else []
                log.info("request.unplanned", reason=str(error))
                return await self._commit(
                    record,
                    "unplanned",
                    "request.unplanned",
                    actor=SYSTEM_ACTOR,
                    reason=str(error),
                    tokens=usage.total_tokens or None,
                    suggestions=tuple(suggestions),
                )

        decisions = tuple(
            self.policy.decide(request.requester, step, groups=request.groups)
            for step in plan.steps
        )
        planned, planned_event = advance(
            record,
            "planned",
            "request.planned",
            SYSTEM_ACTOR,
            tokens=usage.total_tokens or None,
            intent=intent,
            plan=plan,
            decisions=decisions,
        )
        # The plan, its verdict and (when nothing needs approval) the start of execution
        # are stored in one write: each has its own audit event, and none can exist
        # without the others.
        outcome, outcome_event = self._verdict(planned)
        events = [planned_event, outcome_event]
        if outcome.state == "approved" and self.jobs is None:
            outcome, executing_event = advance(
                outcome, "executing", "request.executing", SYSTEM_ACTOR
            )
            events.append(executing_event)
        record = await self._save(record, outcome, events)
        if record.state == "executing":
            return await self._run(record)
        if record.state == "approved":
            return await self._dispatch(record)
        return record

    async def _plan(self, intent: Intent, groups: Sequence[str] = ()) -> Plan:
        """Plan with only the actions the requester may run or request in that environment.

        When nothing permitted matches, the offline phrasings are tried against every
        action, so a request for something forbidden is answered with the rule that
        forbids it instead of "I don't know how"; policy then denies it like any step.
        No model ever sees a forbidden action.
        """
        ids = self.policy.permitted_actions(
            intent.requester,
            intent.environment,
            (action.id for action in self.catalog),
            groups=groups,
        )
        try:
            return await self.planner.plan(intent, self.catalog.restricted(ids))
        except (NoPlan, UnknownAction) as unplanned:
            try:
                return await self._explainer.plan(intent, self.catalog)
            except (NoPlan, InvalidInput):
                raise unplanned from None

    def _verdict(self, planned: RequestRecord) -> tuple[RequestRecord, AuditEvent]:
        """Denied if any step is denied, else awaiting approval if any needs it, else approved."""
        denied = [d for d in planned.decisions if d.decision == "deny"]
        if denied:
            first = denied[0]
            return advance(
                planned,
                "denied",
                "request.denied",
                SYSTEM_ACTOR,
                reason=f"step {first.step_id} ({first.action}) is denied: {first.rule}",
            )
        if any(d.decision == "needs_approval" for d in planned.decisions):
            return advance(
                planned,
                "awaiting_approval",
                "request.awaiting_approval",
                SYSTEM_ACTOR,
                expires_at=utcnow() + self.options.approval_ttl,
            )
        return advance(planned, "approved", "request.approved", SYSTEM_ACTOR)

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
        """Cancel a request that has not started running; the requester or an approver may."""
        while True:
            record = await self.show(request_id)
            if actor != record.request.requester and not self._may_approve_all(
                actor, record, groups
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
        return await execute(
            record,
            catalog=self.catalog,
            guard=self._guard,
            commit=self._commit,
            options=self.options.execution,
        )

    async def verify_audit(self) -> int:
        """The number of audit events; raises ``AuditChainBroken`` at the first bad one."""
        head = await self.store.audit_head()
        return await verify(self.store.audit_events(), head, head_after=self.store.audit_head)

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

    def _guard(self, record: RequestRecord, step: Step) -> str | None:
        """Authorise ``step`` once more right before it runs."""
        decision = self.policy.decide(record.request.requester, step, groups=record.request.groups)
        if decision.decision == "deny":
            return f"policy no longer allows this step: {decision.rule}"
        if decision.decision == "needs_approval":
            have = len(approvals.valid_approvals(record))
            need = max(1, decision.approvals_required)
            if have < need:
                return (
                    f"this step now needs {need} approval(s) and has {have}:"
                    f" {decision.rule}; ask again"
                )
        return None

    def _may_approve_all(
        self, subject: str, record: RequestRecord, groups: Sequence[str] = ()
    ) -> bool:
        if record.plan is None:
            return False
        return all(
            self.policy.may_approve(subject, step, groups=groups)[0] for step in record.plan.steps
        )

    async def _expire_if_due(self, record: RequestRecord) -> RequestRecord:
        while (due := approvals.expire_if_due(record, utcnow())) is not None:
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
