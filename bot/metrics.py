"""Prometheus metrics: one place names every series LAM exports at ``/metrics``.

Names follow Prometheus conventions (``lam_`` prefix, base units, ``_total`` counters).
Labels stay low-cardinality: outcomes, decision types, action ids and statuses, never
request ids, users or free text.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bot.models import AuditEvent, RequestRecord

REGISTRY = CollectorRegistry(auto_describe=True)
"""LAM's own registry, so tests and several engines in one process do not collide with
the default one."""

REQUESTS = Counter(
    "lam_requests_total",
    "Requests by how they ended (succeeded, failed, denied, rejected, expired, cancelled,"
    " unplanned).",
    ["outcome"],
    registry=REGISTRY,
)
DECISIONS = Counter(
    "lam_decisions_total",
    "Policy decisions on planned steps, by type (allow, needs_approval, deny).",
    ["decision"],
    registry=REGISTRY,
)
APPROVAL_WAIT = Histogram(
    "lam_approval_wait_seconds",
    "Time from a plan awaiting approval to its last approval, rejection or expiry.",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 86400),
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "lam_step_duration_seconds",
    "Time one step took to run, by action and final status.",
    ["action", "status"],
    registry=REGISTRY,
)
JOB_QUEUE_DEPTH = Gauge(
    "lam_job_queue_depth",
    "Jobs waiting in the Redis queue, not yet delivered to a worker.",
    registry=REGISTRY,
)
JOBS_RECLAIMED = Counter(
    "lam_jobs_reclaimed_total",
    "Jobs taken over from a worker that stopped renewing them.",
    registry=REGISTRY,
)
LLM_TOKENS = Counter(
    "lam_llm_tokens_total",
    "Tokens the LLM planner used (prompt and completion).",
    registry=REGISTRY,
)
LLM_LATENCY = Histogram(
    "lam_llm_request_seconds",
    "Time of one chat completion call to the model, retries included.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
    registry=REGISTRY,
)
AUDIT_EVENTS = Counter(
    "lam_audit_events_total",
    "Audit events written to the store, by kind.",
    ["kind"],
    registry=REGISTRY,
)
AUDIT_POST_LAG = Gauge(
    "lam_audit_post_lag_events",
    "Audit events written to the store and not yet posted to the Slack audit channel.",
    registry=REGISTRY,
)
SLACK_WORK_QUEUED = Gauge(
    "lam_slack_work_queued",
    "Slack deliveries acknowledged whose work waits for a free slot (LAM_SLACK_CONCURRENCY).",
    registry=REGISTRY,
)
CONNECTORS_FAILED = Gauge(
    "lam_connectors_failed",
    "Configured connector instances that could not start.",
    registry=REGISTRY,
)


TERMINAL_OUTCOMES = frozenset(
    {"succeeded", "failed", "denied", "rejected", "expired", "cancelled", "unplanned"}
)


def observe_change(
    before: RequestRecord, after: RequestRecord, events: Sequence[AuditEvent]
) -> None:
    """Count what one stored change of a request shows; the engine calls it per write."""
    for event in events:
        AUDIT_EVENTS.labels(event.kind).inc()
        if event.tokens:
            LLM_TOKENS.inc(event.tokens)
        if event.kind in ("request.planned", "request.revised"):
            for decision in after.decisions:
                DECISIONS.labels(decision.decision).inc()
        step = event.step
        if (
            event.kind == "step.finished"
            and step is not None
            and step.started_at is not None
            and step.finished_at is not None
        ):
            STEP_DURATION.labels(step.action, step.status).observe(
                (step.finished_at - step.started_at).total_seconds()
            )
    if before.state == "awaiting_approval" and after.state != "awaiting_approval":
        since = before.awaiting_since or before.updated_at  # stored before the field existed
        APPROVAL_WAIT.observe((after.updated_at - since).total_seconds())
    if after.state in TERMINAL_OUTCOMES and before.state != after.state:
        REQUESTS.labels(after.state).inc()
