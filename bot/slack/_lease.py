"""Which replica does the Slack front's follow-up work: one lease, held in the store.

Every replica acknowledges deliveries and calls the engine; one of them, the lease's
holder, also keeps plan messages up to date, posts notifications and results, and posts
the audit trail. The lease is a ``Store.claim`` the holder renews every third of its
``ttl``: if the holder dies, another replica takes the lease once ``ttl`` has passed;
one that stops cleanly gives it up at once.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import structlog

from bot.slack._tasks import woken
from bot.store import Store

log = structlog.get_logger("lam.slack")

LEASE_KEY = "slack:leader"
RELEASE_TTL = timedelta(milliseconds=1)


class Lease:
    """One replica's view of the lease: whether it holds it, as of its last renewal."""

    def __init__(self, store: Store, *, ttl: float, holder: str | None = None) -> None:
        if ttl <= 0:
            raise ValueError(f"a lease's ttl must be positive, not {ttl!r}")
        self._store = store
        self.ttl = ttl
        self.holder = holder or uuid.uuid4().hex
        """This replica's name in the store: unique per process."""
        self.holding = False

    async def renew(self) -> bool:
        """Take or keep the lease if it is free or ours; whether we hold it now.

        A store that cannot be reached holds no lease for anybody: this replica stops
        following up until it can renew again.
        """
        try:
            owner = await self._store.claim(LEASE_KEY, self.holder, timedelta(seconds=self.ttl))
        except Exception as error:  # Whatever the store raises, the lease is not ours.
            log.warning("slack.lease_unavailable", error=str(error))
            owner = None
        held = owner == self.holder
        if held != self.holding:
            log.info("slack.lease_taken" if held else "slack.lease_lost", holder=self.holder)
            self.holding = held
        return held

    async def run(self, stop: asyncio.Event) -> None:
        """Renew every third of the ttl until ``stop`` is set."""
        never = asyncio.Event()
        while not stop.is_set():
            await self.renew()
            await woken(never, stop, seconds=self.ttl / 3)

    async def release(self) -> None:
        """Give the lease up, so another replica takes it at its next renewal."""
        if not self.holding:
            return
        self.holding = False
        try:
            await self._store.claim(LEASE_KEY, self.holder, RELEASE_TTL)
        except Exception as error:  # It expires by itself within the ttl.
            log.warning("slack.lease_release_failed", error=str(error))
