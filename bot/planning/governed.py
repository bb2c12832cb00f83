"""Planning inside policy: the planner sees only what the requester may use.

No model ever sees a forbidden action: the catalog it is offered is cut down to the
actions the requester may run or request in the intent's environment, and every step it
proposes is decided by policy all the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.errors import InvalidInput, NoPlan, UnknownAction
from bot.models import Decision, Intent, Plan, Request
from bot.planning import Planner
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from connectors import Catalog

_EXPLAINER = AliasPlanner()


def permitted(policy: Policy, catalog: Catalog, intent: Intent, groups: Sequence[str]) -> Catalog:
    """The actions the requester may run or request in the intent's environment."""
    ids = policy.permitted_actions(
        intent.requester, intent.environment, (action.id for action in catalog), groups=groups
    )
    return catalog.restricted(ids)


async def plan(
    planner: Planner, policy: Policy, catalog: Catalog, intent: Intent, groups: Sequence[str]
) -> Plan:
    """Plan with only the actions the requester may run or request in that environment.

    When nothing permitted matches, the offline phrasings are tried against every
    action, so a request for something forbidden is answered with the rule that forbids
    it instead of "I don't know how"; policy then denies it like any step.
    """
    try:
        return await planner.plan(intent, permitted(policy, catalog, intent, groups))
    except (NoPlan, UnknownAction) as unplanned:
        try:
            return await _EXPLAINER.plan(intent, catalog)
        except (NoPlan, InvalidInput):
            raise unplanned from None


def decide(policy: Policy, request: Request, plan: Plan) -> tuple[Decision, ...]:
    """Policy's decision on every step, for the requester and the groups they asked with."""
    return tuple(
        policy.decide(request.requester, step, groups=request.groups) for step in plan.steps
    )
