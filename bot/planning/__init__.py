"""Planning: turning an intent into a plan of known actions with validated arguments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bot.models import Intent, Plan
from connectors import Catalog


class Planner(Protocol):
    name: str

    async def plan(self, intent: Intent, catalog: Catalog) -> Plan:
        """A plan for ``intent`` using only actions from ``catalog``.

        Raises ``NoPlan`` (with the closest actions) when it finds none, and
        ``UnknownAction`` or ``InvalidArguments`` for an explicit request it cannot honour.
        A planner that may ask the person (the LLM's) raises ``ClarificationNeeded``;
        their answers come back in ``intent.conversation``. A planner never runs anything.
        """
        ...

    async def revise(
        self,
        intent: Intent,
        catalog: Catalog,
        plan: Plan,
        failure: str,
        *,
        succeeded: Sequence[str] = (),
    ) -> Plan | None:
        """A plan for what is left of ``intent`` after a step of ``plan`` failed.

        ``failure`` is the error (and output) of the failed step, untrusted text;
        ``succeeded`` the ids of the steps that ran. Returns ``None`` when this planner
        cannot revise at all (the offline one), and raises ``NoPlan`` when it tried and
        has no revision.
        """
        ...

    async def aclose(self) -> None:
        """Release what the planner holds (an HTTP client); nothing for offline planners."""
        ...
