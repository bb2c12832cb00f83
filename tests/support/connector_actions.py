"""One connector's actions run directly, as the executor would run them, without an engine."""

from __future__ import annotations

from typing import Any

from bot.models import StepResult
from connectors.base import Action, ActionResult, Connector
from tests.support.actions import action_context

EXECUTOR_BUDGET = 30.0
"""Seconds the executor allows a step unless a test says otherwise."""


def action_of(connector: Connector, action: str) -> Action:
    """The connector's action named ``action``, without the connector's name in front."""
    return {a.id: a for a in connector.actions()}[f"{connector.name}.{action}"]


async def run_action(
    connector: Connector,
    action: str,
    *,
    dry_run: bool = False,
    budget: float | None = EXECUTOR_BUDGET,
    **args: Any,
) -> ActionResult:
    """Run ``action`` with ``args`` validated as the planner's would be.

    ``budget`` is the time the executor allows the step; ``None`` allows the action's own
    timeout.
    """
    found = action_of(connector, action)
    timeout = found.timeout if budget is None else budget
    return await found.run(
        found.params.model_validate(args), action_context(dry_run=dry_run, timeout=timeout)
    )


def data_of(result: ActionResult | StepResult) -> dict[str, Any]:
    """The structured output of a result or step that returned a JSON object."""
    assert isinstance(result.data, dict), result.data
    return result.data
