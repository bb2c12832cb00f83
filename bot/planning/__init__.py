"""Planning: turning an intent into a plan of known actions with validated arguments."""

from __future__ import annotations

from typing import Protocol

from bot.models import Intent, Plan
from connectors import Catalog


class Planner(Protocol):
    name: str

    async def plan(self, intent: Intent, catalog: Catalog) -> Plan:
        """A plan for ``intent`` using only actions from ``catalog``.

        Raises ``NoPlan`` (with the closest actions) when it finds none, and
        ``UnknownAction`` or ``InvalidArguments`` for an explicit request it cannot honour.
        A planner never runs anything.
        """
        ...

    async def aclose(self) -> None:
        """Release what the planner holds (an HTTP client); nothing for offline planners."""
        ...
