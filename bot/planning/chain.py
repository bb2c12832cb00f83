"""The planner LAM runs: the offline phrasings first, the model only when none matches.

A request that matches an example phrasing exactly is planned without calling any model:
it is faster, free, and the same every time. Only a request no phrasing covers (or that
several cover equally) goes to the LLM planner, when one is configured. A request the
model asked about goes back to the model with the answers: the phrasings did not match
it the first time, and only the model can read an answer in the context of its question.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.errors import NoPlan
from bot.models import Intent, Plan
from bot.planning.aliases import AliasPlanner
from bot.planning.llm import LLMPlanner
from connectors import Catalog


class ChainPlanner:
    """Aliases, then the LLM; ``Plan.planner`` names the one that made each plan."""

    def __init__(self, aliases: AliasPlanner, llm: LLMPlanner | None) -> None:
        self.aliases = aliases
        self.llm = llm
        self.name = f"{aliases.name}+{llm.name}" if llm is not None else aliases.name

    async def plan(self, intent: Intent, catalog: Catalog, *, history: Sequence[str] = ()) -> Plan:
        """The alias plan when a phrasing matches; else the model's, when there is one.

        A phrasing that matches with invalid values (``tail /etc/shadow``), and an
        explicit ``run <action>`` that names an unknown action, are answered by the
        offline planner's error: the person said exactly what they want, and a model
        would only guess around it. ``ClarificationNeeded`` and ``NoPlan`` from the model
        pass through. An intent with a conversation goes to the model directly.
        """
        llm = self.llm
        if intent.conversation and llm is not None:
            return await llm.plan(intent, catalog, history=history)
        try:
            return await self.aliases.plan(intent, catalog)
        except NoPlan:
            if llm is None:
                raise
        return await llm.plan(intent, catalog, history=history)

    async def revise(
        self,
        intent: Intent,
        catalog: Catalog,
        plan: Plan,
        failure: str,
        *,
        succeeded: Sequence[str] = (),
    ) -> Plan | None:
        """A revised plan from the model; ``None`` without one (phrasings cannot revise)."""
        if self.llm is None:
            return None
        return await self.llm.revise(intent, catalog, plan, failure, succeeded=succeeded)

    async def aclose(self) -> None:
        if self.llm is not None:
            await self.llm.aclose()
