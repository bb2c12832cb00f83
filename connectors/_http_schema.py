"""JSON Schema (as OpenAPI 3 writes it) turned into pydantic types for an action's Params.

Supported: ``string``, ``integer``, ``number``, ``boolean``, ``array``, ``object`` (with
``properties``, ``required``, ``additionalProperties``), ``enum``, ``const``, ``nullable``
and ``type: [X, "null"]``, ``allOf`` of objects, ``anyOf``/``oneOf`` of one type and null,
``$ref`` within the document, and the usual bounds (lengths, ``minimum``..., ``pattern``).
``format`` is ignored. Anything else is refused with the place in the schema named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, create_model

from connectors.base import Params


class UnsupportedSchema(ValueError):
    """The schema uses something the http connector cannot turn into a typed parameter."""


class SchemaParams(Params):
    """Base of models built from JSON Schema: its patterns are JSON Schema's (``re.search``)."""

    model_config = ConfigDict(
        regex_engine="python-re", validate_by_name=True, validate_by_alias=True
    )


_SCALARS: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool}
_BOUNDS = {
    "minLength": "min_length",
    "maxLength": "max_length",
    "minItems": "min_length",
    "maxItems": "max_length",
    "minimum": "ge",
    "maximum": "le",
    "exclusiveMinimum": "gt",
    "exclusiveMaximum": "lt",
    "pattern": "pattern",
}
# Keywords that describe or annotate without constraining what a client sends.
_IGNORED = frozenset(
    {
        "description",
        "title",
        "format",
        "example",
        "examples",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
        "xml",
        "externalDocs",
        "discriminator",
        "nullable",
        "$schema",
        "$id",
        "$comment",
        "contentMediaType",
        "contentEncoding",
        "uniqueItems",
        "multipleOf",
    }
)
_HANDLED = frozenset(
    {"type", "enum", "const", "items", "properties", "required", "additionalProperties"}
    | set(_BOUNDS)
    | {"allOf", "anyOf", "oneOf", "$ref"}
)

IDENTIFIER = re.compile(r"[^a-z0-9]+")


def snake_case(name: str) -> str:
    """``getService`` → ``get_service``, ``X-Request-Id`` → ``x_request_id``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    snake = IDENTIFIER.sub("_", spaced.lower()).strip("_")
    if not snake or not snake[0].isalpha():
        snake = "p_" + snake
    return snake


def field_name(wire_name: str) -> str:
    """A Python field name for a wire name, clear of pydantic's own attributes."""
    name = snake_case(wire_name)
    return name + "_" if name in dir(BaseModel) or name.startswith("model_") else name


class SchemaConverter:
    """Converts the schemas of one OpenAPI document, resolving its ``$ref``s."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self._models = 0

    def deref(self, node: Any, where: str, seen: tuple[str, ...] = ()) -> Mapping[str, Any]:
        """``node`` with its ``$ref`` chain followed; a cycle or a dangling ref is refused."""
        if not isinstance(node, Mapping):
            raise UnsupportedSchema(f"{where}: expected an object, found {type(node).__name__}")
        ref = node.get("$ref")
        if ref is None:
            return node
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise UnsupportedSchema(f"{where}: $ref {ref!r} is outside the document")
        if ref in seen:
            raise UnsupportedSchema(f"{where}: $ref {ref!r} is recursive, which is not supported")
        target: Any = self.document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise UnsupportedSchema(f"{where}: $ref {ref!r} points at nothing")
            target = target[part]
        return self.deref(target, where, (*seen, ref))

    def annotation(self, schema: Any, where: str, seen: tuple[str, ...] = ()) -> Any:
        """The pydantic type of values valid for ``schema`` (constraints attached)."""
        if isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
            if schema["$ref"] in seen:
                raise UnsupportedSchema(f"{where}: $ref {schema['$ref']!r} is recursive")
            seen = (*seen, schema["$ref"])
        schema = self.deref(schema, where)
        unknown = {key for key in set(schema) - _HANDLED - _IGNORED if not key.startswith("x-")}
        if unknown:
            raise UnsupportedSchema(f"{where}: {sorted(unknown)} are not supported")
        nullable = schema.get("nullable") is True
        if "allOf" in schema:
            return self._nullable(self._all_of(schema, where, seen), nullable)
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                return self._nullable(self._one_or_null(schema, keyword, where, seen), nullable)
        if "const" in schema:
            return self._nullable(Literal[schema["const"]], nullable)
        if "enum" in schema:
            values = list(schema["enum"])
            if None in values:
                values.remove(None)
                nullable = True
            if not values or any(isinstance(v, dict | list) for v in values):
                raise UnsupportedSchema(f"{where}: enum values must be scalars")
            return self._nullable(Literal[tuple(values)], nullable)
        kind = schema.get("type")
        if isinstance(kind, list):
            types = [t for t in kind if t != "null"]
            nullable = nullable or len(types) < len(kind)
            if len(types) != 1:
                raise UnsupportedSchema(
                    f"{where}: a value of several types {kind} is not supported"
                )
            kind = types[0]
        if kind is None:
            kind = "object" if "properties" in schema else None
        base: Any
        if kind in _SCALARS:
            base = _SCALARS[kind]
        elif kind == "array":
            base = list[self.annotation(schema.get("items", {}), f"{where}[]", seen)]  # type: ignore[misc]
        elif kind == "object":
            base = self._object(schema, where, seen)
        elif kind is None:
            base = JsonValue
        else:
            raise UnsupportedSchema(f"{where}: type {kind!r} is not supported")
        return self._nullable(self._bounded(base, schema, kind, where), nullable)

    def _bounded(self, base: Any, schema: Mapping[str, Any], kind: Any, where: str) -> Any:
        bounds: dict[str, Any] = {}
        for keyword, argument in _BOUNDS.items():
            if keyword not in schema:
                continue
            if keyword == "pattern":
                try:
                    re.compile(schema[keyword])
                except (re.error, TypeError) as error:
                    raise UnsupportedSchema(
                        f"{where}: pattern {schema[keyword]!r} is not a valid regex: {error}"
                    ) from None
            if keyword.startswith("exclusive") and isinstance(schema[keyword], bool):
                # OpenAPI 3.0 writes exclusiveMinimum: true beside minimum.
                if schema[keyword]:
                    limit = "minimum" if keyword == "exclusiveMinimum" else "maximum"
                    bounds[_BOUNDS[limit]] = None
                    bounds[argument] = schema.get(limit)
                continue
            bounds.setdefault(argument, schema[keyword])
        bounds = {k: v for k, v in bounds.items() if v is not None}
        if kind == "number":
            bounds["allow_inf_nan"] = False
        return Annotated[base, Field(**bounds)] if bounds else base

    def _object(self, schema: Mapping[str, Any], where: str, seen: tuple[str, ...]) -> Any:
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties", not properties)
        if not properties:
            if isinstance(extra, Mapping):
                return dict[str, self.annotation(extra, f"{where}.*", seen)]  # type: ignore[misc]
            return dict[str, JsonValue]
        if extra not in (False, True) and extra != {}:
            raise UnsupportedSchema(
                f"{where}: an object with both properties and typed additionalProperties"
                " is not supported"
            )
        fields: dict[str, Any] = {
            name: (annotation, self.field_info(resolved, required=required, alias=wire))
            for name, (wire, annotation, resolved, required) in self.fields(
                properties, set(schema.get("required", ())), where, seen
            ).items()
        }
        self._models += 1
        title = "".join(part.title() for part in snake_case(where.split(".")[-1]).split("_"))
        return create_model(
            f"{title}{self._models}", __base__=SchemaParams, __module__=__name__, **fields
        )

    def fields(
        self,
        properties: Mapping[str, Any],
        required: set[str],
        where: str,
        seen: tuple[str, ...] = (),
    ) -> dict[str, tuple[str, Any, Mapping[str, Any], bool]]:
        """Each writable property by field name: its JSON name, type, schema, requiredness."""
        fields: dict[str, tuple[str, Any, Mapping[str, Any], bool]] = {}
        for wire_name, property_schema in properties.items():
            resolved = self.deref(property_schema, f"{where}.{wire_name}")
            if resolved.get("readOnly") is True:
                continue
            name = field_name(wire_name)
            if name in fields:
                raise UnsupportedSchema(f"{where}: two properties are both named {name!r}")
            annotation = self.annotation(property_schema, f"{where}.{wire_name}", seen)
            fields[name] = (wire_name, annotation, resolved, wire_name in required)
        return fields

    @staticmethod
    def field_info(schema: Mapping[str, Any], *, required: bool, alias: str | None) -> Any:
        description = schema.get("description") or schema.get("title")
        if alias is not None and field_name(alias) == alias:
            alias = None
        if required:
            return Field(description=description, alias=alias)
        if "default" in schema:
            default = schema["default"]
            return Field(default=default, description=description, alias=alias)
        return Field(default=None, description=description, alias=alias)

    def _all_of(self, schema: Mapping[str, Any], where: str, seen: tuple[str, ...]) -> Any:
        parts = [self.deref(part, f"{where}.allOf") for part in schema["allOf"]]
        if len(parts) == 1 and set(schema) <= {"allOf", *_IGNORED}:
            return self.annotation(schema["allOf"][0], where, seen)
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in [*parts, {k: v for k, v in schema.items() if k != "allOf"}]:
            if part.get("type", "object") != "object" or set(part) & {"anyOf", "oneOf", "allOf"}:
                raise UnsupportedSchema(f"{where}: allOf is supported for objects only")
            merged["properties"].update(part.get("properties", {}))
            merged["required"].extend(part.get("required", ()))
        return self._object(merged, where, seen)

    def _one_or_null(
        self, schema: Mapping[str, Any], keyword: str, where: str, seen: tuple[str, ...]
    ) -> Any:
        options = [self.deref(option, f"{where}.{keyword}") for option in schema[keyword]]
        typed = [option for option in options if option.get("type") != "null"]
        if len(typed) != 1:
            raise UnsupportedSchema(
                f"{where}: {keyword} with several alternatives is not supported"
                " (only one type, optionally with null)"
            )
        original = schema[keyword][options.index(typed[0])]
        annotation = self.annotation(original, where, seen)
        return annotation | None if len(typed) < len(options) else annotation

    @staticmethod
    def _nullable(annotation: Any, nullable: bool) -> Any:
        return annotation | None if nullable else annotation
