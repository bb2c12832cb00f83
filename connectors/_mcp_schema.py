"""An MCP tool's input schema (JSON Schema) as the pydantic ``Params`` of an action.

Two layers, so that arguments are always validated before a call:

- A typed model, for the planner and for readable errors: ``string``, ``integer``,
  ``number``, ``boolean``, ``null``, ``enum``, ``const``, arrays, objects (nested
  models), ``required``, ``default`` and nullable properties (``type: [T, "null"]`` or
  ``anyOf: [T, {type: null}]``, the form pydantic and FastMCP write). A property in any
  other form (``oneOf``, several types, tuples, ...) is typed as any JSON value and shows
  its schema as the server wrote it. Unknown keys are refused, also in nested objects,
  unless the schema explicitly allows more properties.
- ``jsonschema`` then validates the arguments exactly as they will be sent against the
  tool's own schema, which enforces every keyword the typed model leaves out (``pattern``,
  ``uniqueItems``, combinators; ``format`` only annotates, as JSON Schema 2020-12 has it).

A schema whose top level LAM cannot type (``$ref``, combinators, open-ended properties,
not an object) becomes an untyped model: its arguments are kept as given, the planner
sees the server's schema verbatim, and ``jsonschema`` alone validates them.

An optional argument left unset is not sent at all, so the server applies its own
default; references (``$ref``) resolve only within the schema, never over the network.
"""

from __future__ import annotations

import copy
import keyword
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import jsonschema
from jsonschema.exceptions import SchemaError
from pydantic import ConfigDict, Field, JsonValue, create_model, model_validator
from referencing import Registry
from referencing.exceptions import Unresolvable

from connectors.base import Params

MAX_PROBLEMS = 5
"""Schema violations reported per call; the rest are counted, not listed."""
MAX_PROBLEM_LENGTH = 300

_TOP_LEVEL_UNTYPED = ("$ref", "$defs", "definitions", "allOf", "anyOf", "oneOf", "not", "if")
_OPEN_ENDED = ("additionalProperties", "patternProperties", "unevaluatedProperties")
_SCALARS = (str, int, float, bool, type(None))


class ToolSchemaError(ValueError):
    """The server's input schema for a tool is not a JSON Schema LAM can validate with."""


class _ToolArguments(Params):
    """A model of JSON Schema properties, written back to JSON the way the server wants it."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    optional_properties: ClassVar[frozenset[str]] = frozenset()
    """Properties the schema does not require: left out when unset (``None``)."""

    def arguments(self) -> dict[str, Any]:
        """The properties as JSON, optional ones left unset omitted, at every depth."""
        sent: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            key = info.alias or name
            value = getattr(self, name)
            if value is None and key in self.optional_properties:
                continue
            sent[key] = _json(value)
        return sent


def _json(value: Any) -> Any:
    if isinstance(value, _ToolArguments):
        return value.arguments()
    if isinstance(value, list):
        return [_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    return value


class ToolParams(_ToolArguments):
    """Arguments of an MCP tool: validated against the tool's schema as they will be sent."""

    tool_validator: ClassVar[Any]
    """The ``jsonschema`` validator for the tool's input schema."""

    @model_validator(mode="after")
    def _matches_tool_schema(self) -> ToolParams:
        problems = schema_problems(self.tool_validator, self.arguments())
        if problems:
            raise ValueError("; ".join(problems))
        return self


class UntypedToolParams(ToolParams):
    """Arguments of a tool whose schema LAM cannot type: ``jsonschema`` alone checks them."""

    model_config = ConfigDict(extra="allow", frozen=True)

    server_schema: ClassVar[dict[str, Any]] = {}

    def arguments(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # The planner sees the server's own schema, "$ref"s and all: LAM could not type it.
        return copy.deepcopy(cls.server_schema)


def schema_problems(validator: Any, arguments: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``arguments`` under the tool's schema, one line per problem."""
    try:
        errors = sorted(validator.iter_errors(dict(arguments)), key=lambda e: list(e.path))
    except Unresolvable as unresolvable:
        return [f"the tool's schema refers to {unresolvable.ref!r}, which it does not define"]
    problems: list[str] = []
    for error in errors[:MAX_PROBLEMS]:
        where = ".".join(str(part) for part in error.path)
        text = (f"{where}: {error.message}" if where else error.message)[:MAX_PROBLEM_LENGTH]
        if text not in problems:
            problems.append(text)
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_PROBLEMS} more problems")
    return problems


def params_model(class_name: str, description: str, schema: Mapping[str, Any]) -> type[ToolParams]:
    """The ``Params`` of a tool with this input schema; ``ToolSchemaError`` if it is invalid."""
    validator = _validator(_closed(schema))
    if not _typeable(schema):
        return _untyped_model(class_name, description, schema, validator)
    properties: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    fields = _fields(class_name, properties, required)
    model: type[ToolParams] = create_model(
        class_name, __base__=ToolParams, __doc__=description, __module__=__name__, **fields
    )
    model.tool_validator = validator
    model.optional_properties = frozenset(properties) - required
    return model


def field_name(property_name: str) -> str:
    """The model field for a property: the name itself unless Python or pydantic forbid it."""
    if (
        property_name.isidentifier()
        and not keyword.iskeyword(property_name)
        and not property_name.startswith(("_", "model_"))
        and property_name not in dir(ToolParams)
    ):
        return property_name
    return "p_" + re.sub(r"\W", "_", property_name)


def _validator(schema: Mapping[str, Any]) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(dict(schema))
    except SchemaError as error:
        raise ToolSchemaError(f"its input schema is invalid: {error.message}") from None
    # An empty registry: a "$ref" resolves within the schema, never by fetching a URL.
    return cls(schema, registry=Registry())


def _closed(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema with unknown top-level keys refused, unless it says otherwise.

    Only where the schema lists every property itself: ``allOf`` or a ``$ref`` may bring
    properties from elsewhere.
    """
    closed = dict(schema)
    lists_all = "properties" in schema and not any(
        key in schema for key in (*_OPEN_ENDED, "allOf", "$ref")
    )
    if _typeable(schema) or lists_all:
        closed.setdefault("additionalProperties", False)
    return closed


def _typeable(schema: Mapping[str, Any]) -> bool:
    properties = schema.get("properties", {})
    return (
        schema.get("type") == "object"
        and isinstance(properties, dict)
        and not any(key in schema for key in (*_TOP_LEVEL_UNTYPED, *_OPEN_ENDED))
        and len({field_name(name) for name in properties}) == len(properties)
    )


def _untyped_model(
    class_name: str, description: str, schema: Mapping[str, Any], validator: Any
) -> type[ToolParams]:
    model: type[UntypedToolParams] = create_model(
        class_name, __base__=UntypedToolParams, __doc__=description, __module__=__name__
    )
    model.server_schema = dict(schema)
    model.tool_validator = validator
    return model


def _fields(owner: str, properties: Mapping[str, Any], required: set[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, prop in properties.items():
        prop_schema: Mapping[str, Any] = prop if isinstance(prop, dict) else {}
        annotation = _annotation(f"{owner}_{field_name(name)}", prop_schema)
        info: dict[str, Any] = {"description": prop_schema.get("description")}
        if field_name(name) != name:
            info["alias"] = name
        if "examples" in prop_schema:
            info["examples"] = prop_schema["examples"]
        if name in required:
            fields[field_name(name)] = (annotation, Field(**info))
        elif prop_schema.get("default") is not None:
            fields[field_name(name)] = (annotation, Field(default=prop_schema["default"], **info))
        else:
            fields[field_name(name)] = (annotation | None, Field(default=None, **info))
    return fields


def _annotation(owner: str, schema: Mapping[str, Any]) -> Any:
    """A Python type that accepts at least what ``schema`` accepts (jsonschema narrows)."""
    nullable, inner = _without_null(schema)
    annotation = _base_annotation(owner, inner)
    return annotation | None if nullable else annotation


def _without_null(schema: Mapping[str, Any]) -> tuple[bool, Mapping[str, Any]]:
    """Whether ``schema`` admits null, and the schema of its other values."""
    kind = schema.get("type")
    if isinstance(kind, list) and "null" in kind and len(kind) == 2:
        (other,) = [k for k in kind if k != "null"]
        return True, {**schema, "type": other}
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            (other,) = [o for o in options if o != {"type": "null"}]
            if isinstance(other, dict):
                rest = {k: v for k, v in schema.items() if k != combinator}
                return True, {**rest, **other}
    return False, schema


def _base_annotation(owner: str, schema: Mapping[str, Any]) -> Any:
    # Any, not JsonValue: its schema is the server's, inline; jsonschema checks the value.
    untyped = Annotated[Any, Field(json_schema_extra=dict(schema))]
    if any(key in schema for key in (*_TOP_LEVEL_UNTYPED, "prefixItems")):
        return untyped
    if "const" in schema:
        return _literal([schema["const"]]) or untyped
    if "enum" in schema:
        return _literal(schema["enum"]) or untyped
    kind = schema.get("type")
    if kind == "string":
        limits = _limits(schema, min_length="minLength", max_length="maxLength")
        return Annotated[str, limits, _shown(schema, "pattern", "format")]
    if kind == "integer":
        return Annotated[int, _limits(schema, **_NUMBER_LIMITS)]
    if kind == "number":
        return Annotated[float, _limits(schema, **_NUMBER_LIMITS), Field(allow_inf_nan=False)]
    if kind == "boolean":
        return bool
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items", True)
        item = _annotation(owner, items) if isinstance(items, dict) else JsonValue
        limits = _limits(schema, min_length="minItems", max_length="maxItems")
        shown = _shown(schema, "uniqueItems")
        # A type built at run time: mypy cannot follow it, pydantic can.
        return Annotated[list[item], limits, shown]  # type: ignore[valid-type]
    if kind == "object":
        return _object_annotation(owner, schema)
    return untyped


_NUMBER_LIMITS = {
    "ge": "minimum",
    "le": "maximum",
    "gt": "exclusiveMinimum",
    "lt": "exclusiveMaximum",
    "multiple_of": "multipleOf",
}


def _limits(schema: Mapping[str, Any], **keywords: str) -> Any:
    """Field constraints from the schema's numeric limits; a malformed one is left to jsonschema."""
    constraints = {
        field: schema[key]
        for field, key in keywords.items()
        if isinstance(schema.get(key), int | float) and not isinstance(schema.get(key), bool)
    }
    return Field(**constraints)


def _shown(schema: Mapping[str, Any], *keywords: str) -> Any:
    """Keywords the planner should see that jsonschema, not pydantic, enforces."""
    return Field(json_schema_extra={key: schema[key] for key in keywords if key in schema} or None)


def _object_annotation(owner: str, schema: Mapping[str, Any]) -> Any:
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    if isinstance(properties, dict) and properties and extra is None and _typeable(schema):
        required = set(schema.get("required") or ())
        fields = _fields(owner, properties, required)
        nested: type[_ToolArguments] = create_model(
            owner, __base__=_ToolArguments, __module__=__name__, **fields
        )
        nested.optional_properties = frozenset(properties) - required
        return nested
    if isinstance(extra, dict) and not properties:
        return dict[str, _annotation(owner, extra)]  # type: ignore[misc]  # a runtime type
    return dict[str, JsonValue]


def _literal(values: Any) -> Any:
    if not isinstance(values, list) or not values:
        return None
    if not all(isinstance(v, _SCALARS) for v in values):
        return None
    return Literal[tuple(values)]
