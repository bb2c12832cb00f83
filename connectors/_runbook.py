"""Runbooks as lam.yaml declares them: typed parameters and argv templates.

A runbook is an argv template, never a shell string: each ``{param}`` is replaced by one
validated value inside one argv element, so no value can add an argument, a pipe or a
command.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from bot.models import Risk
from connectors import _sandbox
from connectors.base import Params

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
"""Runbook and parameter names: they become action ids, model fields and planner slots."""
SLOT = re.compile(r"\{([a-z_][a-z0-9_]*)\}")

ParamType = Literal["string", "integer", "number", "boolean", "path"]
Scalar = str | int | float | bool
_PYTHON_TYPES: dict[ParamType, type] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "path": str,
}


class ParamSpec(BaseModel):
    """One typed runbook parameter; it becomes one field of the action's ``Params``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParamType = "string"
    description: str = ""
    default: Scalar | None = None
    required: bool | None = None
    """Defaults to true unless a ``default`` is given; an optional value left unset drops
    every argv element that mentions it (write ``--since={since}`` for optional flags)."""
    pattern: str | None = None
    """A regular expression the whole value must match (strings and paths)."""
    choices: list[Scalar] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    under: list[str] = Field(default_factory=list)
    """For paths: directories the resolved path must lie in, so ``../`` and symlinks
    cannot lead elsewhere. Required for ``type: path``."""
    allow_dash: bool = False
    """Let a value start with ``-``; off, because such a value is read as an option."""

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "path":
            if not self.under:
                raise ValueError("a path parameter needs 'under': the directories it may name")
            for directory in self.under:
                if not os.path.isabs(directory):
                    raise ValueError(f"'under' directory {directory!r} must be absolute")
        elif self.under:
            raise ValueError("'under' applies to path parameters only")
        if self.pattern is not None:
            if self.type not in ("string", "path"):
                raise ValueError("'pattern' applies to string and path parameters only")
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ValueError(
                    f"pattern {self.pattern!r} is not a valid regex: {error}"
                ) from None
        if (self.minimum is not None or self.maximum is not None) and self.type not in (
            "integer",
            "number",
        ):
            raise ValueError("'minimum' and 'maximum' apply to integer and number parameters only")
        if self.required and self.default is not None:
            raise ValueError("a parameter with a default cannot also be required")
        for value in [*(self.choices or ()), *([] if self.default is None else [self.default])]:
            try:
                TypeAdapter(self.annotation()).validate_python(value)
            except ValidationError as error:
                problem = error.errors()[0]["msg"]
                raise ValueError(f"{value!r} is not a valid {self.type}: {problem}") from None
        return self

    @property
    def is_required(self) -> bool:
        return self.default is None if self.required is None else self.required

    def annotation(self) -> Any:
        """The field's type: the Python type with this spec's checks attached."""
        return Annotated[_PYTHON_TYPES[self.type], AfterValidator(self._check)]

    def field(self) -> tuple[Any, Any]:
        """``(type, FieldInfo)`` for ``pydantic.create_model``."""
        extra: dict[str, Any] = {}
        if self.pattern is not None:
            extra["pattern"] = f"^(?:{self.pattern})$"
        if self.choices is not None:
            extra["enum"] = list(self.choices)
        info: dict[str, Any] = {
            "description": self.description or None,
            "json_schema_extra": extra or None,
            "ge": self.minimum,
            "le": self.maximum,
        }
        if self.type == "number":
            info["allow_inf_nan"] = False
        annotation = self.annotation()
        if self.is_required:
            return annotation, Field(**info)
        if self.default is None:
            return annotation | None, Field(default=None, **info)
        return annotation, Field(default=self.default, validate_default=True, **info)

    def _check(self, value: Any) -> Any:
        if isinstance(value, str) and any(unicodedata.category(c) == "Cc" for c in value):
            raise ValueError("must not contain NUL or other control characters")
        text = argv_text(value)
        if not isinstance(value, bool) and text.startswith("-") and not self.allow_dash:
            raise ValueError(
                f"must not start with '-': {text!r} would be read as an option"
                " (a runbook that means it sets allow_dash: true)"
            )
        if self.pattern is not None and re.fullmatch(self.pattern, text) is None:
            raise ValueError(f"must match the pattern {self.pattern!r} as a whole")
        if self.choices is not None and value not in self.choices:
            raise ValueError("must be one of " + ", ".join(repr(c) for c in self.choices))
        if self.type == "path":
            return self._resolve(text)
        return value

    def _resolve(self, path: str) -> str:
        if not os.path.isabs(path):
            raise ValueError(f"{path!r} must be an absolute path")
        real = os.path.realpath(path)
        for directory in self.under:
            allowed = os.path.realpath(directory)
            if os.path.commonpath([allowed, real]) == allowed:
                return real
        raise ValueError(f"{path!r} resolves to {real!r}, which is not under {self.under!r}")


class Runbook(BaseModel):
    """A named command with typed parameters, as lam.yaml declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str
    examples: list[str] = Field(default_factory=list)
    """Phrasings for the offline planner, with ``{param}`` slots."""
    argv: list[str] = Field(min_length=1)
    """The command; elements may hold ``{param}`` placeholders, never the program name."""
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    risk: Risk = "read"
    resource: str | None = None
    """The parameter that names the target, for resource-scoped policy rules."""
    timeout: float = Field(default=30.0, gt=0)
    supports_dry_run: bool = False
    """Dry-run runs ``dry_run_argv``, or without one only reports the argv it would run."""
    dry_run_argv: list[str] | None = Field(default=None, min_length=1)
    idempotent: bool = False
    read_paths: list[str] = Field(default_factory=list)
    """Host paths bound read-only into the sandbox (path parameters are bound anyway)."""

    @model_validator(mode="after")
    def _consistent(self) -> Runbook:
        for name in self.params:
            if not NAME.match(name):
                raise ValueError(f"parameter name {name!r} must match {NAME.pattern}")
            if name in dir(Params):
                raise ValueError(f"parameter name {name!r} is taken by pydantic; rename it")
        used: set[str] = set()
        for template in (self.argv, self.dry_run_argv or []):
            if template and placeholders(template[0]):
                raise ValueError(f"the program {template[0]!r} must not come from a parameter")
            for element in template:
                used |= placeholders(element)
        if unknown := used - set(self.params):
            raise ValueError(f"argv uses undeclared parameters: {sorted(unknown)}")
        if unused := set(self.params) - used:
            raise ValueError(f"parameters declared but not used in argv: {sorted(unused)}")
        if self.resource is not None and self.resource not in self.params:
            raise ValueError(f"resource {self.resource!r} is not one of the parameters")
        for example in self.examples:
            if unknown := set(SLOT.findall(example)) - set(self.params):
                raise ValueError(f"example {example!r} names undeclared slots {sorted(unknown)}")
        if self.dry_run_argv is not None and not self.supports_dry_run:
            raise ValueError("dry_run_argv is set but supports_dry_run is false")
        for path in self.read_paths:
            _sandbox.check_bindable(path)
        return self


def placeholders(element: str) -> set[str]:
    """The parameter names in one argv element; anything but ``{name}`` is refused."""
    try:
        parsed = list(string.Formatter().parse(element))
    except ValueError as error:
        raise ValueError(
            f"argv element {element!r}: {error} (write {{{{ and }}}} for literal braces)"
        ) from None
    names: set[str] = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not NAME.match(name) or spec or conversion:
            raise ValueError(
                f"argv element {element!r}: placeholders are plain parameter names like"
                " {path}; no positions, attributes, indexes, conversions or formats"
            )
        names.add(name)
    return names


def argv_text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(template: Sequence[str], values: Mapping[str, Scalar | None]) -> list[str]:
    """The argv: each element filled in on its own, dropped if it names an unset value."""
    argv: list[str] = []
    for element in template:
        parts: list[str] = []
        for literal, name, _, _ in string.Formatter().parse(element):
            parts.append(literal)
            if name is not None:
                value = values[name]
                if value is None:
                    break
                parts.append(argv_text(value))
        else:
            argv.append("".join(parts))
    return argv


def params_model(runbook_name: str, runbook: Runbook) -> type[Params]:
    """The runbook's ``Params``: the JSON schema the LLM sees, with the checks attached."""
    class_name = "".join(part.title() for part in runbook_name.split("_")) + "Params"
    fields: dict[str, Any] = {name: spec.field() for name, spec in runbook.params.items()}
    return create_model(
        class_name, __base__=Params, __doc__=runbook.description, __module__=__name__, **fields
    )
