"""What an engine's audit trail recorded about one request."""

from __future__ import annotations

from bot.engine import Engine
from bot.models import AuditEvent


async def events_of(engine: Engine, request_id: str) -> list[AuditEvent]:
    """The audit events about ``request_id``, oldest first."""
    return [e async for e in engine.store.audit_events() if e.request_id == request_id]


async def kinds_of(engine: Engine, request_id: str) -> list[str]:
    """The kinds of the audit events about ``request_id``, oldest first."""
    return [e.kind for e in await events_of(engine, request_id)]
