"""The offline alias planner: phrasings with typed slots, several steps, explicit form."""

from __future__ import annotations

import pytest

from bot.errors import InvalidArguments, InvalidInput, NoPlan, UnknownAction
from bot.models import Intent, Plan
from bot.planning.aliases import AliasPlanner
from connectors import Catalog
from tests.support.actions import ScriptedConnector


@pytest.fixture
def catalog() -> Catalog:
    return Catalog([ScriptedConnector()])


def intent(goal: str, *, environment: str = "staging", dry_run: bool = False) -> Intent:
    return Intent(
        goal=goal,
        environment=environment,
        environment_source="text",
        dry_run=dry_run,
        requester="user:alice",
    )


async def plan(goal: str, catalog: Catalog) -> Plan:
    return await AliasPlanner().plan(intent(goal), catalog)


async def test_phrasing_slots_become_validated_arguments(catalog: Catalog) -> None:
    """'restart web' fills the service slot and names the resource for policy."""
    result = await plan("restart web", catalog)
    (step,) = result.steps
    assert (step.action, step.args, step.resource, step.risk) == (
        "test.restart",
        {"service": "web"},
        "web",
        "write",
    )
    assert step.environment == "staging"


async def test_the_most_specific_phrasing_wins(catalog: Catalog) -> None:
    """'restart the web service' matches the longer phrasing, not 'restart {service}'."""
    result = await plan("restart the web service", catalog)
    assert result.steps[0].args == {"service": "web"}


async def test_quoted_slot_values_keep_their_spaces(catalog: Catalog) -> None:
    """A quoted slot value is one argument, without its quotes."""
    result = await plan('echo "hello world"', catalog)
    assert result.steps[0].args == {"text": "hello world"}


async def test_then_makes_dependent_steps(catalog: Catalog) -> None:
    """'X then Y' and 'X and then Y' plan steps in order, each depending on the last."""
    result = await plan("restart web then echo done and then noop", catalog)
    assert [s.action for s in result.steps] == ["test.restart", "test.echo", "test.noop"]
    assert [s.depends_on for s in result.steps] == [(), ("s1",), ("s2",)]


async def test_explicit_form_names_the_action(catalog: Catalog) -> None:
    """'run connector.action key=value' plans exactly that action with typed arguments."""
    result = await plan("run test.flaky failures=2", catalog)
    assert result.steps[0].action == "test.flaky"
    assert result.steps[0].args == {"failures": 2}


async def test_explicit_unknown_action_suggests_the_closest(catalog: Catalog) -> None:
    """A misspelt action id is refused with the closest real one."""
    with pytest.raises(UnknownAction, match="did you mean 'test.restart'"):
        await plan("run test.restrat service=web", catalog)


async def test_invalid_arguments_are_refused_with_the_field(catalog: Catalog) -> None:
    """A value that fails the Params model names the field and the problem."""
    with pytest.raises(InvalidArguments, match="service: String should match pattern"):
        await plan("restart Web!", catalog)
    with pytest.raises(InvalidArguments, match="failures: Input should be a valid integer"):
        await plan("run test.flaky failures=many", catalog)
    with pytest.raises(InvalidArguments, match="colour: Extra inputs are not permitted"):
        await plan("run test.noop colour=red", catalog)


async def test_malformed_explicit_arguments_are_refused(catalog: Catalog) -> None:
    """An argument without '=' or given twice is refused, not guessed."""
    with pytest.raises(InvalidInput, match="not of the form key=value"):
        await plan("run test.echo hello", catalog)
    with pytest.raises(InvalidInput, match="given twice"):
        await plan("run test.echo text=a text=b", catalog)


async def test_no_match_suggests_actions_and_plans_nothing(catalog: Catalog) -> None:
    """A request matching no phrasing raises NoPlan with the closest actions and examples."""
    with pytest.raises(NoPlan) as raised:
        await plan("restart all the things now please", catalog)
    assert "nothing was run" in str(raised.value)
    assert raised.value.suggestions[0].startswith("test.restart: e.g. 'restart")


async def test_dry_run_travels_with_the_plan(catalog: Catalog) -> None:
    """A dry-run intent makes a dry-run plan."""
    result = await AliasPlanner().plan(intent("echo hi", dry_run=True), catalog)
    assert result.dry_run is True


async def test_plan_hash_changes_with_any_argument(catalog: Catalog) -> None:
    """Two plans differing in one argument have different hashes; equal plans equal ones."""
    web, api = await plan("restart web", catalog), await plan("restart api", catalog)
    assert web.plan_hash != api.plan_hash
    assert web.plan_hash == (await plan("restart web", catalog)).plan_hash
