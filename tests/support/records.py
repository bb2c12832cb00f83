"""Requests and audit events for store tests, at fixed times so orderings are known."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.models import AuditEvent, EventKind, Request, RequestRecord

START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def make_record(
    requester: str = "user:alice",
    *,
    minute: int = 0,
    text: str = "restart api in staging",
    environment: str | None = None,
) -> RequestRecord:
    """A new request received ``minute`` minutes after ``START``."""
    request = Request(
        text=text,
        requester=requester,
        environment=environment,
        received_at=START + timedelta(minutes=minute),
    )
    return RequestRecord(request=request)


def make_event(
    record: RequestRecord, kind: EventKind = "request.received", *, actor: str | None = None
) -> AuditEvent:
    """An audit event about ``record`` in its current state, not yet sealed."""
    return AuditEvent(
        kind=kind,
        request_id=record.id,
        actor=actor or record.request.requester,
        state=record.state,
        at=START,
    )
