"""Data flow between steps: an argument may name the output of an earlier step.

The syntax (the LLM planner's system prompt teaches it to the model):

- ``${s1.output}``: the text output of step ``s1``;
- ``${s1.data}``: its structured output (``ActionResult.data``), whole;
- ``${s1.data.key.0.name}``: one value inside it: object keys and list indexes, by dots;
- ``$${`` is a literal ``${``.

A value that is exactly one reference becomes the referenced JSON value (a number stays a
number); a reference inside a longer string is replaced by its text, and only scalars may
be embedded that way. References are checked when a plan is made (the syntax, and that
they name an earlier step) and resolved right before the step runs, after which the
arguments are validated again by the action's ``Params``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, JsonValue, ValidationError

from bot.errors import InvalidArguments, InvalidInput
from bot.models import Step, StepStatus
from connectors import Action, describe_validation_error

STEP_ID = r"[A-Za-z][A-Za-z0-9_-]*"
# Anything that starts like a reference, so a misspelt one is an error and never text.
OPENING = re.compile(r"\$\$\{|\$\{([^}]*)\}?")
REFERENCE = re.compile(rf"^(?P<step>{STEP_ID})\.(?P<field>output|data)(?P<path>(?:\.[^.\s]+)*)$")


class InvalidReference(InvalidInput):
    """An argument refers to another step in a way LAM cannot follow; nothing was run."""


class StepOutput(Protocol):
    """What a finished step offers to later ones (``StepResult`` once it carries ``data``)."""

    @property
    def status(self) -> StepStatus: ...

    @property
    def output(self) -> str: ...

    @property
    def data(self) -> JsonValue: ...


@dataclass(frozen=True)
class Reference:
    """One ``${step.field.path}`` inside an argument value."""

    step: str
    field: Literal["output", "data"]
    path: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "${" + ".".join((self.step, self.field, *self.path)) + "}"


def parse(text: str) -> list[Reference | str]:
    """``text`` as literal pieces and references, in order; ``InvalidReference`` if malformed."""
    pieces: list[Reference | str] = []
    position = 0
    for match in OPENING.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        if match.group(0) == "$${":
            pieces.append("${")
            continue
        if not match.group(0).endswith("}"):
            raise InvalidReference(f"{text!r} opens a reference with '${{' but never closes it")
        found = REFERENCE.match(match.group(1))
        if found is None:
            raise InvalidReference(
                f"{match.group(0)!r} is not a reference; write ${{s1.output}}, ${{s1.data}}"
                " or ${s1.data.key}, naming an earlier step (or $${ for a literal '${')"
            )
        path = tuple(found.group("path").split(".")[1:])
        if found.group("field") == "output" and path:
            raise InvalidReference(
                f"{match.group(0)!r}: a step's output is text and has no fields; use"
                f" ${{{found.group('step')}.data.{path[0]}}} for structured output"
            )
        field: Literal["output", "data"] = "output" if found.group("field") == "output" else "data"
        pieces.append(Reference(found.group("step"), field, path))
    pieces.append(text[position:])
    return [piece for piece in pieces if piece != ""]


def references_in(args: Mapping[str, JsonValue]) -> dict[str, list[Reference]]:
    """The references in each argument (only those that have any), checked for syntax."""
    found: dict[str, list[Reference]] = {}
    for key, value in args.items():
        refs = [piece for text in _strings(value) for piece in parse(text)]
        if any(isinstance(piece, Reference) for piece in refs):
            found[key] = [piece for piece in refs if isinstance(piece, Reference)]
    return found


def check_references(
    step_id: str, args: Mapping[str, JsonValue], earlier: Iterable[str]
) -> tuple[str, ...]:
    """The steps that ``args`` refer to, all of which must come before ``step_id``."""
    before = list(earlier)
    named: list[str] = []
    for key, refs in references_in(args).items():
        for ref in refs:
            if ref.step not in before:
                raise InvalidReference(
                    f"argument {key!r} of step {step_id!r} refers to {str(ref)!r}, but"
                    f" {ref.step!r} is not an earlier step"
                    + (f" (earlier: {', '.join(before)})" if before else " (it is the first)")
                )
            if ref.step not in named:
                named.append(ref.step)
    return tuple(named)


def resolve_references(step: Step, results: Mapping[str, StepOutput]) -> dict[str, JsonValue]:
    """``step``'s arguments with every reference replaced by what it names.

    ``results`` maps step ids to their results. A reference to a step that has no
    result or did not succeed, or to a key or index its data lacks, raises
    ``InvalidReference``. The caller validates the returned arguments again with the
    action's ``Params``: a resolved value is data from a tool and is trusted no more
    than the model's own arguments.
    """
    return {key: _resolve_value(value, step, results) for key, value in step.args.items()}


def validate_arguments(
    action: Action, args: dict[str, JsonValue]
) -> tuple[dict[str, JsonValue], str]:
    """Arguments that may hold references, as a step keeps them, and its resource for policy.

    Without references: the validated ``Params`` (defaults filled in, paths resolved).
    With references, their values are unknown until the steps they name have run: every
    other argument is validated now, all are validated again once resolved, and a
    referring resource stays the reference text until then (the executor checks policy
    again with the resolved one before the step runs).
    """
    referring = set(references_in(args))
    try:
        params: BaseModel | None = action.params.model_validate(args)
    except ValidationError as error:
        problems = [
            describe_validation_error(e)
            for e in error.errors()
            if not (e["loc"] and e["loc"][0] in referring)
        ]
        if problems:
            raise InvalidArguments(action.id, problems) from None
        params = None
    if params is not None and not referring:
        return params.model_dump(mode="json"), action.resource(params)
    name = action.resource_param
    if name is None:
        resource = "*"
    elif name in referring or params is None:
        resource = str(args[name]) if args.get(name) is not None else "*"
    else:
        resource = action.resource(params)
    return dict(args), resource


def has_references(value: JsonValue) -> bool:
    return any(isinstance(piece, Reference) for text in _strings(value) for piece in parse(text))


def _strings(value: JsonValue) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    return []


def _resolve_value(value: JsonValue, step: Step, results: Mapping[str, StepOutput]) -> JsonValue:
    if isinstance(value, list):
        return [_resolve_value(item, step, results) for item in value]
    if isinstance(value, dict):
        return {key: _resolve_value(item, step, results) for key, item in value.items()}
    if not isinstance(value, str):
        return value
    pieces = parse(value)
    if len(pieces) == 1 and isinstance(pieces[0], Reference):
        return _lookup(pieces[0], step, results)
    text: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            text.append(piece)
            continue
        found = _lookup(piece, step, results)
        if isinstance(found, dict | list):
            raise InvalidReference(
                f"step {step.id!r} embeds {str(piece)!r} in text, but it is a"
                f" {'list' if isinstance(found, list) else 'object'}; refer to one value inside it"
            )
        text.append(found if isinstance(found, str) else json.dumps(found))
    return "".join(text)


def _lookup(ref: Reference, step: Step, results: Mapping[str, StepOutput]) -> JsonValue:
    result = results.get(ref.step)
    if result is None or result.status != "succeeded":
        state = "has not run" if result is None else result.status
        raise InvalidReference(
            f"step {step.id!r} needs {str(ref)!r}, but step {ref.step!r} {state}; it was not run"
        )
    if ref.field == "output":
        return result.output
    value: JsonValue = result.data
    for depth, key in enumerate(ref.path):
        where = ".".join((ref.step, "data", *ref.path[:depth]))
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            kind = type(value).__name__ if value is not None else "null"
            raise InvalidReference(
                f"step {step.id!r} needs {str(ref)!r}, but {where} ({kind}) has no {key!r}"
            )
    return value
