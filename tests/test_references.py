"""References between steps: ``${s1.output}`` and ``${s1.data.key}`` in arguments."""

from __future__ import annotations

import pytest
from pydantic import JsonValue

from bot.errors import InvalidArguments
from bot.models import Step, StepResult, StepStatus
from bot.planning.references import (
    InvalidReference,
    Reference,
    check_references,
    has_references,
    parse,
    resolve_references,
    validate_arguments,
)
from connectors import Catalog
from tests.support.actions import ScriptedConnector


class Finished(StepResult):
    """A step result with structured data, as ``StepResult`` will carry it."""

    data: JsonValue = None


def result(
    step_id: str, *, output: str = "", data: JsonValue = None, status: StepStatus = "succeeded"
) -> Finished:
    return Finished(step_id=step_id, action="test.noop", status=status, output=output, data=data)


def step(args: dict[str, JsonValue]) -> Step:
    return Step(id="s3", action="test.echo", args=args, environment="dev", risk="read")


RESULTS = {
    "s1": result("s1", output="web-7\n", data={"hosts": [{"name": "web-7", "port": 8080}], "n": 1}),
    "s2": result("s2", status="failed"),
}


def test_parse_splits_text_and_references() -> None:
    """Text and references come apart in order; $${ is a literal ${."""
    assert parse("at ${s1.data.hosts.0.name}: $${x} ${s2.output}") == [
        "at ",
        Reference("s1", "data", ("hosts", "0", "name")),
        ": ",
        "${",
        "x} ",
        Reference("s2", "output"),
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("${s1.outptu}", "is not a reference"),
        ("${s1}", "is not a reference"),
        ("${s1.output", "never closes it"),
        ("${s1.output.name}", "has no fields"),
    ],
)
def test_malformed_references_are_refused(text: str, problem: str) -> None:
    """A misspelt reference is an error with the syntax to use, never left as text."""
    with pytest.raises(InvalidReference, match=problem):
        parse(text)


def test_a_whole_value_reference_keeps_its_json_type() -> None:
    """A value that is one reference becomes the referenced value, numbers included."""
    args = resolve_references(
        step({"port": "${s1.data.hosts.0.port}", "all": "${s1.data}"}), RESULTS
    )
    assert args == {"port": 8080, "all": RESULTS["s1"].data}


def test_embedded_references_become_text() -> None:
    """References inside a longer string, in lists and objects too, are replaced by their text."""
    args = resolve_references(
        step({"text": "host ${s1.data.hosts.0.name} (${s1.data.n})", "tags": ["${s1.output}"]}),
        RESULTS,
    )
    assert args == {"text": "host web-7 (1)", "tags": ["web-7\n"]}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("${s2.output}", "step 's2' failed; it was not run"),
        ("${s9.output}", "step 's9' has not run"),
        ("${s1.data.hosts.3}", r"s1.data.hosts \(list\) has no '3'"),
        ("${s1.data.nope}", r"s1.data \(dict\) has no 'nope'"),
        ("see ${s1.data.hosts}", "embeds '\\${s1.data.hosts}' in text, but it is a list"),
    ],
)
def test_unresolvable_references_stop_the_step(value: str, problem: str) -> None:
    """A reference to a failed step or to missing data raises, naming both."""
    with pytest.raises(InvalidReference, match=problem):
        resolve_references(step({"text": value}), RESULTS)


def test_references_must_name_earlier_steps() -> None:
    """Planning accepts references to earlier steps only and lists the ones named."""
    args: dict[str, JsonValue] = {"a": "${s1.output}", "b": ["x ${s2.data.k}"], "c": "${s1.data}"}
    assert check_references("s3", args, ["s1", "s2"]) == ("s1", "s2")
    with pytest.raises(InvalidReference, match="'s3' is not an earlier step"):
        check_references("s2", {"a": "${s3.output}"}, ["s1"])
    assert has_references(["${s1.output}"]) and not has_references("$${s1.output}")


def test_arguments_are_validated_around_their_references() -> None:
    """At planning, a referring argument waits for its value; the others are checked now."""
    restart = Catalog([ScriptedConnector()]).get("test.restart")
    assert validate_arguments(restart, {"service": "web"}) == ({"service": "web"}, "web")
    assert validate_arguments(restart, {"service": "${s1.data.name}"}) == (
        {"service": "${s1.data.name}"},
        "${s1.data.name}",
    )
    with pytest.raises(InvalidArguments, match="extra: Extra inputs are not permitted"):
        validate_arguments(restart, {"service": "${s1.output}", "extra": 1})
