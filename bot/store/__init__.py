"""Where requests and the audit chain live: the ``Store`` protocol and its implementations.

Every change to a request is one atomic ``save``: the new record (compare-and-set on its
``version``) together with the audit events that describe the change. A store can never
hold a state that its audit trail does not explain, or the other way round.

A store also keeps short-lived claims (``claim``), so that a request delivered twice (a
Slack retry, a second replica receiving the same event) is recorded and run only once; a
claim its owner renews is a lease (one replica at a time does something). And it keeps a
small shared memory (``remember``, ``recall``) for what the fronts must agree on across
replicas (where a plan message is, how far a feed has got), never for anything the audit
trail has to explain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Protocol

from bot.models import AuditEvent, RequestRecord, State


class Store(Protocol):
    async def create(self, record: RequestRecord, events: Sequence[AuditEvent]) -> RequestRecord:
        """Store a new request (its ``version`` becomes 1) with its first audit events.

        Raises ``IllegalTransition`` when a request with that id exists already.
        """
        ...

    async def save(
        self, record: RequestRecord, expected_version: int, events: Sequence[AuditEvent]
    ) -> RequestRecord:
        """Replace a request if it is still at ``expected_version``, and append ``events``.

        Returns the record as stored (``version`` bumped). Raises ``ConcurrentUpdate`` when
        another writer got there first, ``UnknownRequest`` when there is no such request.
        """
        ...

    async def append(self, events: Sequence[AuditEvent]) -> None:
        """Append audit events that change no request (a policy reload), atomically."""
        ...

    async def get(self, request_id: str) -> RequestRecord:
        """Raises ``UnknownRequest`` when there is no such request."""
        ...

    async def history(
        self,
        *,
        requester: str | None = None,
        states: frozenset[State] | None = None,
        limit: int = 20,
    ) -> list[RequestRecord]:
        """Most recent requests first, optionally only one requester's or in some states."""
        ...

    def audit_events(self, after_seq: int = 0) -> AsyncIterator[AuditEvent]:
        """The audit chain in order, starting after ``after_seq``, exactly as stored."""
        ...

    async def audit_head(self) -> tuple[int, str]:
        """The ``(seq, hash)`` of the last appended event; ``(0, "")`` when there is none.

        Kept apart from the events, so removing events from the end is detected too.
        """
        ...

    async def audit_checkpoint(self) -> tuple[int, str]:
        """The ``(seq, hash)`` of the last event retention removed; ``(0, "")`` if none.

        Verification continues the chain from here.
        """
        ...

    async def claim(self, key: str, request_id: str, ttl: timedelta) -> str:
        """Claim ``key`` for ``request_id`` for ``ttl``; return the request id that owns it.

        Atomic: of many concurrent claims of one free key (from any process), exactly one
        wins and every claimant gets the winner's id back. The owner's own claim returns its
        id again and renews the claim for ``ttl`` from now, so a request retried after a lost
        reply is not its own duplicate, and a holder that keeps claiming keeps a lease (a
        tiny ``ttl`` gives it up). Once ``ttl`` has passed (by the store's clock) the key is
        free for a new claim. Raises ``ValueError`` for a ``ttl`` that is not positive.
        """
        ...

    async def remember(self, key: str, value: str, ttl: timedelta | None = None) -> None:
        """Keep ``value`` under ``key``, replacing what was there, for ``ttl`` or for good.

        Raises ``ValueError`` for a ``ttl`` that is not positive.
        """
        ...

    async def recall(self, key: str) -> str | None:
        """The value kept under ``key``; ``None`` when there is none or its ``ttl`` has passed."""
        ...

    async def aclose(self) -> None: ...
