"""OpenAPI 3 operations as http connector endpoints.

Only the operations lam.yaml selects (by ``operationId`` or by tag) become actions, so an
API's other operations stay out of reach. Each operation's path, query and header
parameters become fields of its Params; a JSON object request body contributes its
properties as fields too (or one ``body`` field when it is not an object with properties,
or when a property's name clashes with a parameter's).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, create_model
from yarl import URL

from connectors._http_endpoint import (
    RESERVED_HEADERS,
    Endpoint,
    EndpointSettings,
    Location,
    Method,
    Wire,
    check_header,
    header_value,
    path_segment,
)
from connectors._http_schema import SchemaConverter, SchemaParams, field_name, snake_case
from connectors._runbook import SLOT

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
PARAMETER_LOCATIONS: dict[str, Location] = {"path": "path", "query": "query", "header": "header"}
_SCALAR_TYPES = frozenset({"string", "integer", "number", "boolean"})


class OperationSettings(EndpointSettings):
    """What lam.yaml adds to or overrides in one imported operation."""

    description: str | None = None


class InvalidDocument(ValueError):
    """The OpenAPI document cannot be used; the message names the document or operation."""


@dataclass(frozen=True)
class Operation:
    id: str
    """The ``operationId``, or ``<method>_<path>`` for an operation without one."""
    method: Method
    path: str
    node: Mapping[str, Any]
    path_item: Mapping[str, Any]


def parse_document(raw: bytes, source: str) -> dict[str, Any]:
    """The document as a dict; ``InvalidDocument`` when it is not OpenAPI 3 JSON or YAML."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidDocument(f"OpenAPI document {source} is not UTF-8 text") from None
    try:
        document = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InvalidDocument(
            f"OpenAPI document {source} does not parse as JSON or YAML: {problem}"
        ) from None
    if not isinstance(document, dict):
        raise InvalidDocument(f"OpenAPI document {source} is not a JSON or YAML object")
    version = document.get("openapi")
    if not isinstance(version, str) or not version.startswith("3."):
        hint = " (Swagger 2.0 is not supported)" if "swagger" in document else ""
        raise InvalidDocument(
            f"OpenAPI document {source} has no 'openapi: 3.x' field{hint}; only OpenAPI 3 is"
            " supported"
        )
    if not isinstance(document.get("paths"), dict):
        raise InvalidDocument(f"OpenAPI document {source} has no 'paths' object")
    return document


def operations(document: Mapping[str, Any]) -> list[Operation]:
    """Every operation in the document, in document order."""
    found: list[Operation] = []
    for path, item in document["paths"].items():
        if not isinstance(item, Mapping):
            continue
        for method in HTTP_METHODS:
            node = item.get(method)
            if not isinstance(node, Mapping):
                continue
            operation_id = node.get("operationId")
            if not isinstance(operation_id, str) or not operation_id:
                operation_id = f"{method}_{snake_case(path)}"
            found.append(Operation(operation_id, method.upper(), path, node, item))  # type: ignore[arg-type]
    return found


def select(
    document: Mapping[str, Any], operation_ids: Sequence[str], tags: Sequence[str], source: str
) -> list[Operation]:
    """The operations named by id or carrying one of ``tags``; a name that matches none fails."""
    available = operations(document)
    by_id = {operation.id: operation for operation in available}
    for operation_id in operation_ids:
        if operation_id not in by_id:
            close = difflib.get_close_matches(operation_id, list(by_id), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidDocument(
                f"OpenAPI document {source} has no operation {operation_id!r}{hint}"
            )
    for tag in tags:
        if not any(tag in operation.node.get("tags", ()) for operation in available):
            raise InvalidDocument(f"OpenAPI document {source} has no operation tagged {tag!r}")
    return [
        operation
        for operation in available
        if operation.id in operation_ids or set(tags) & set(operation.node.get("tags", ()))
    ]


def server_url(document: Mapping[str, Any], document_url: URL | None) -> str | None:
    """``servers[0].url`` with its variables' defaults, made absolute against the document."""
    servers = document.get("servers")
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], Mapping):
        return None
    url = str(servers[0].get("url", ""))
    for name, variable in (servers[0].get("variables") or {}).items():
        if isinstance(variable, Mapping) and "default" in variable:
            url = url.replace("{" + name + "}", str(variable["default"]))
    if url.startswith(("http://", "https://")):
        return url
    if document_url is None:
        return None
    return str(document_url.join(URL(url)))


def endpoint(
    operation: Operation,
    converter: SchemaConverter,
    *,
    base_url: str,
    settings: OperationSettings,
    default_timeout: float,
) -> Endpoint:
    """One selected operation as an ``Endpoint``; ``InvalidDocument`` names what is wrong."""
    where = f"operation {operation.id!r} ({operation.method} {operation.path})"
    try:
        fields, wires, body_required = _fields(operation, converter)
        description = settings.description or _description(operation)
        for name in [settings.resource] if settings.resource else []:
            if name not in fields:
                raise ValueError(f"resource {name!r} is not one of its parameters {sorted(fields)}")
        for example in settings.examples:
            if unknown := set(SLOT.findall(example)) - set(fields):
                raise ValueError(f"example {example!r} names unknown slots {sorted(unknown)}")
        class_name = "".join(part.title() for part in snake_case(operation.id).split("_"))
        params = create_model(
            class_name + "Params",
            __base__=SchemaParams,
            __doc__=description,
            __module__=__name__,
            **fields,
        )
        return Endpoint(
            name=snake_case(operation.id),
            method=operation.method,
            url=base_url.rstrip("/") + operation.path,
            params=params,
            wires=tuple(wires),
            description=description,
            body_required=body_required,
            **settings.endpoint_fields(operation.method, default_timeout),
        )
    except Exception as error:  # pydantic and schema errors alike get the operation's name
        raise InvalidDocument(f"{where}: {error}") from None


def _fields(
    operation: Operation, converter: SchemaConverter
) -> tuple[dict[str, Any], list[Wire], bool]:
    fields: dict[str, Any] = {}
    wires: list[Wire] = []
    declared: dict[tuple[str, str], Mapping[str, Any]] = {}
    for node in [*operation.path_item.get("parameters", ()), *operation.node.get("parameters", ())]:
        parameter = converter.deref(node, "parameters")
        declared[(str(parameter.get("name")), str(parameter.get("in")))] = parameter
    for (name, declared_location), parameter in declared.items():
        where = f"parameter {name!r} (in {declared_location})"
        required = declared_location == "path" or parameter.get("required") is True
        if declared_location == "cookie" and required:
            raise ValueError(f"{where}: cookie parameters are not supported")
        if declared_location == "cookie" or (
            declared_location == "header" and name.lower() in RESERVED_HEADERS
        ):
            # Optional cookies can be left out; LAM sets credentials and framing headers.
            continue
        location = PARAMETER_LOCATIONS.get(declared_location)
        if location is None:
            raise ValueError(f"{where}: unknown location {declared_location!r}")
        if "schema" not in parameter:
            raise ValueError(f"{where}: only parameters with a 'schema' are supported")
        if location == "header":
            check_header(name)
        explode = _check_style(parameter, location, converter.deref(parameter["schema"], where))
        annotation = converter.annotation(parameter["schema"], where)
        if location == "path":
            annotation = Annotated[annotation, AfterValidator(path_segment)]
        elif location == "header":
            annotation = Annotated[annotation, AfterValidator(header_value)]
        field = field_name(name)
        if field in fields:
            raise ValueError(f"{where}: its field name {field!r} is used twice")
        resolved = converter.deref(parameter["schema"], where)
        schema = {
            **resolved,
            "description": parameter.get("description") or resolved.get("description"),
        }
        fields[field] = (annotation, converter.field_info(schema, required=required, alias=None))
        wires.append(Wire(field=field, location=location, name=name, explode=explode))
    body_required = _body_fields(operation, converter, fields, wires)
    return fields, wires, body_required


def _check_style(
    parameter: Mapping[str, Any], location: Location, schema: Mapping[str, Any]
) -> bool:
    """Whether a query list repeats its key; refuses the styles LAM cannot send."""
    where = f"parameter {parameter.get('name')!r} (in {location})"
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        raise ValueError(f"{where}: object parameters are not supported")
    if kind == "array":
        if location == "path":
            raise ValueError(f"{where}: array path parameters are not supported")
        items = schema.get("items", {})
        if not isinstance(items, Mapping) or items.get("type", "string") not in _SCALAR_TYPES:
            raise ValueError(f"{where}: only arrays of strings, numbers or booleans are supported")
    style = parameter.get("style", "form" if location == "query" else "simple")
    if style not in ("form", "simple"):
        raise ValueError(f"{where}: style {style!r} is not supported")
    return bool(parameter.get("explode", style == "form"))


def _body_fields(
    operation: Operation, converter: SchemaConverter, fields: dict[str, Any], wires: list[Wire]
) -> bool:
    """Adds the request body's fields; whether the operation requires a body."""
    if "requestBody" not in operation.node:
        return False
    body = converter.deref(operation.node["requestBody"], "requestBody")
    content = body.get("content") or {}
    media = next(
        (m for m in content if m == "application/json" or m.split(";")[0].endswith("+json")),
        None,
    )
    if media is None:
        raise ValueError(
            f"request body types {sorted(content)} are not supported; only application/json"
        )
    required = body.get("required") is True
    raw_schema = content[media].get("schema", {})
    schema = converter.deref(raw_schema, "requestBody")
    properties = schema.get("properties")
    flat = (
        schema.get("type", "object") == "object"
        and isinstance(properties, Mapping)
        and properties
        and not (set(schema) & {"allOf", "anyOf", "oneOf"})
        and schema.get("additionalProperties") in (None, False)
    )
    if flat:
        assert isinstance(properties, Mapping)
        body_fields = converter.fields(properties, set(schema.get("required", ())), "body")
        if not set(body_fields) & set(fields):
            for name, (wire, annotation, resolved, is_required) in body_fields.items():
                info = converter.field_info(resolved, required=is_required, alias=None)
                fields[name] = (annotation, info)
                wires.append(Wire(field=name, location="body", name=wire))
            return required
    if "body" in fields:
        raise ValueError("a parameter named 'body' leaves no name for the request body")
    description = schema.get("description") or body.get("description") or "The JSON request body."
    annotation = converter.annotation(raw_schema, "body")
    fields["body"] = (
        annotation,
        converter.field_info({"description": description}, required=required, alias=None),
    )
    wires.append(Wire(field="body", location="body", name=None))
    return False


def _description(operation: Operation) -> str:
    for key in ("summary", "description"):
        value = operation.node.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().split("\n\n")[0]
    return f"{operation.method} {operation.path}"
