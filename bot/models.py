"""The domain models every layer passes along: immutable, with one canonical JSON form."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

Risk = Literal["read", "write", "destructive"]
Verb = Literal["run", "request", "approve"]
DecisionKind = Literal["allow", "needs_approval", "deny"]
Verdict = Literal["approved", "rejected"]
State = Literal[
    "received",
    "clarifying",
    "unplanned",
    "planned",
    "denied",
    "awaiting_approval",
    "approved",
    "rejected",
    "expired",
    "cancelled",
    "executing",
    "succeeded",
    "failed",
]
StepStatus = Literal[
    "pending", "running", "succeeded", "failed", "skipped", "cancelled", "interrupted"
]
EventKind = Literal[
    "request.received",
    "request.clarifying",
    "request.answered",
    "request.unplanned",
    "request.planned",
    "request.revised",
    "request.denied",
    "request.awaiting_approval",
    "approval.granted",
    "approval.rejected",
    "request.approved",
    "request.expired",
    "request.cancelled",
    "request.executing",
    "step.started",
    "step.finished",
    "request.succeeded",
    "request.failed",
    "policy.reloaded",
    "policy.refused",
]

TERMINAL_STATES: frozenset[State] = frozenset(
    {"unplanned", "denied", "rejected", "expired", "cancelled", "succeeded", "failed"}
)
FINISHED_STEP_STATUSES: frozenset[StepStatus] = frozenset(
    {"succeeded", "failed", "skipped", "cancelled", "interrupted"}
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A short, unguessable request id that is easy to type in a terminal or Slack."""
    return uuid.uuid4().hex[:12]


def canonical_json(value: BaseModel | JsonValue) -> str:
    """The one serialisation hashes are taken over: sorted keys, no whitespace, UTF-8."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Request(Model):
    """What a person asked, exactly as a front received it."""

    id: str = Field(default_factory=new_id)
    text: str
    requester: str
    """Policy subject of the person asking, e.g. ``user:alice`` or ``user:T01/U02``."""
    source: Literal["console", "slack"] = "console"
    channel: str | None = None
    thread: str | None = None
    environment: str | None = None
    """Environment fixed by the front (a ``--env`` flag, a channel bound to one)."""
    groups: tuple[str, ...] = ()
    """Directory groups (``group:HANDLE``) the front found the requester in when they asked."""
    dry_run: bool = False
    received_at: datetime = Field(default_factory=utcnow)


class Turn(Model):
    """One question the planner put to the requester, and their answer."""

    question: str
    """As the model wrote it: redacted, on one line, capped."""
    answer: str
    """As the requester wrote it, normalised like request text."""
    asked_at: datetime
    answered_at: datetime = Field(default_factory=utcnow)


class Intent(Model):
    """The goal of a request with its constraints, separated from how it was phrased."""

    goal: str
    """The request text with environment and dry-run phrases taken out."""
    environment: str
    environment_source: Literal["front", "text", "default"]
    dry_run: bool
    requester: str
    channel: str | None = None
    thread: str | None = None
    conversation: tuple[Turn, ...] = ()
    """The planner's questions about this request and the requester's answers, oldest first."""


class Step(Model):
    id: str
    action: str
    args: dict[str, JsonValue]
    environment: str
    resource: str = "*"
    """The target the action names (service, database, runbook path), for policy."""
    risk: Risk
    depends_on: tuple[str, ...] = ()


class Plan(Model):
    steps: tuple[Step, ...]
    planner: str
    dry_run: bool = False
    revision: int = 0
    """0 for a request's first plan, n for its n-th revision after a failed step. It is
    hashed, so a revision that repeats a step is still a new plan: it needs approvals of
    its own, and its steps get new idempotency keys."""

    @model_validator(mode="after")
    def _steps_run_in_order(self) -> Plan:
        """Step ids are unique and a step depends only on steps before it (no cycles)."""
        if not self.steps:
            raise ValueError("a plan needs at least one step")
        seen: set[str] = set()
        for step in self.steps:
            if step.id in seen:
                raise ValueError(f"step id {step.id!r} is used twice")
            missing = [d for d in step.depends_on if d not in seen]
            if missing:
                raise ValueError(f"step {step.id!r} depends on {missing[0]!r}, not an earlier step")
            seen.add(step.id)
        return self

    @property
    def plan_hash(self) -> str:
        """sha256 of the canonical plan; approvals are bound to it.

        A first plan is hashed without ``revision``, as plans were before it existed, so
        the approvals stored with them stay bound.
        """
        data = self.model_dump(mode="json", exclude={"revision"} if not self.revision else None)
        return sha256_hex(canonical_json(data))


class Decision(Model):
    step_id: str
    action: str
    environment: str
    resource: str
    decision: DecisionKind
    rule: str
    """The policy rule that decided, or why none did."""
    approvers: tuple[str, ...] = ()
    """Subjects or roles that may approve, when the decision is ``needs_approval``."""
    approvals_required: int = 0


class Approval(Model):
    approver: str
    verdict: Verdict
    plan_hash: str
    rule: str
    """The policy rule that let this approver decide."""
    reason: str | None = None
    at: datetime = Field(default_factory=utcnow)


class StepResult(Model):
    step_id: str
    action: str
    status: StepStatus
    attempts: int = 0
    output: str = ""
    data: JsonValue = None
    """Structured output a later step may refer to as ``${s1.data.key}``."""
    truncated: bool = False
    error: str | None = None
    sandboxed: bool | None = None
    dry_run: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None


class PlanAttempt(Model):
    """A plan of the request that failed and was revised: what was decided and what ran."""

    plan: Plan
    decisions: tuple[Decision, ...] = ()
    approvals: tuple[Approval, ...] = ()
    """Bound to this plan's hash: none of them approves a later plan."""
    results: tuple[StepResult, ...] = ()
    failure: str
    """The failure that made LAM revise it."""


class RequestRecord(Model):
    """Everything LAM knows about one request; the store keeps exactly this.

    Every field added after records were first stored has a default, so older records
    load unchanged.
    """

    request: Request
    state: State = "received"
    version: int = 0
    """Bumped on every stored change, so concurrent writers cannot overwrite each other."""
    intent: Intent | None = None
    plan: Plan | None = None
    decisions: tuple[Decision, ...] = ()
    approvals: tuple[Approval, ...] = ()
    results: tuple[StepResult, ...] = ()
    reason: str | None = None
    """Why the request ended where it did: the denial, rejection or failure."""
    suggestions: tuple[str, ...] = ()
    expires_at: datetime | None = None
    """When the approval window (``awaiting_approval``) or the wait for an answer
    (``clarifying``) closes."""
    updated_at: datetime = Field(default_factory=utcnow)
    question: str | None = None
    """The planner's question while the request is ``clarifying``; ``None`` otherwise."""
    conversation: tuple[Turn, ...] = ()
    """Questions answered so far, oldest first; planning sees them as data."""
    revisions: int = 0
    """How often a failed plan of this request was revised."""
    previous: tuple[PlanAttempt, ...] = ()
    """The plans revised away, oldest first, with their decisions, approvals and results."""
    awaiting_since: datetime | None = None
    """When the current plan started waiting for approval; ``None`` outside that state."""

    @property
    def id(self) -> str:
        return self.request.id

    def result_of(self, step_id: str) -> StepResult | None:
        return next((r for r in self.results if r.step_id == step_id), None)


class AuditEvent(Model):
    """One lifecycle transition; ``hash`` chains it to the event before it."""

    seq: int = 0
    """Position in the chain, assigned by the store when the event is appended."""
    kind: EventKind
    request_id: str | None
    """The request this event is about; ``None`` for events of LAM itself (policy reloads)."""
    actor: str
    state: State | None
    at: datetime = Field(default_factory=utcnow)
    plan_hash: str | None = None
    decisions: tuple[Decision, ...] = ()
    approval: Approval | None = None
    step: StepResult | None = None
    reason: str | None = None
    tokens: int | None = None
    """Model tokens that planning used, on the event that records the plan (or its failure)."""
    prev_hash: str = ""
    hash: str = ""

    def body(self) -> dict[str, JsonValue]:
        """The fields the hash covers: everything but the hash fields themselves.

        Fields added after events were first written are left out while unset, so older
        chains keep verifying.
        """
        body = self.model_dump(mode="json", exclude={"prev_hash", "hash"})
        if body["tokens"] is None:
            del body["tokens"]
        step = body.get("step")
        if isinstance(step, dict) and step.get("data") is None:
            step.pop("data", None)
        return body
