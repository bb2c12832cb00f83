"""One REST call the http connector can make, and the request built from validated params.

Declared calls and OpenAPI operations both become an ``Endpoint``: a URL template, the
``Params`` model, and where each field goes on the wire. Values never change where a
request goes: a path value is one percent-encoded segment (``/``, ``?``, ``#``, ``@`` and
``%`` are escaped; ``.`` and ``..`` are refused), query values are form-encoded, and
placeholders exist only in the URL's path.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from yarl import URL

from bot.models import Risk
from connectors._egress import Outgoing

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
Location = Literal["path", "query", "header", "body"]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
    }
)
"""Headers a parameter may not set: they carry credentials or frame the request."""

HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
"""An HTTP header name (RFC 9110 token)."""
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TEMPLATE = re.compile(r"^(?P<origin>https?://[^/?#{}]+)(?P<path>/[^?#]*)?(?P<query>\?[^#{}]*)?$")
_PATH_LITERAL_SAFE = "/:@!$&'()*+,;=-._~%"


def default_risk(method: str) -> Risk:
    if method in READ_METHODS:
        return "read"
    return "destructive" if method == "DELETE" else "write"


def default_idempotent(method: str) -> bool:
    return method in IDEMPOTENT_METHODS


class DryRunRequest(BaseModel):
    """A dry run the API itself performs: these additions to the real request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    body: dict[str, JsonValue] = {}
    """Top-level keys merged into the JSON object body."""

    @model_validator(mode="after")
    def _valid_headers(self) -> DryRunRequest:
        for name, value in self.headers.items():
            check_header(name, value)
        return self


DryRun = Literal["describe"] | DryRunRequest | None


class EndpointSettings(BaseModel):
    """What lam.yaml may say of any http action, declared or imported from OpenAPI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    examples: list[str] = Field(default_factory=list)
    """Phrasings for the offline planner, with ``{param}`` slots."""
    risk: Risk | None = None
    """Defaults by method: GET, HEAD, OPTIONS read; DELETE destructive; others write."""
    resource: str | None = None
    idempotent: bool | None = None
    """Defaults by method: GET, HEAD, OPTIONS, PUT, DELETE are; POST and PATCH are not."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds; defaults to the connector's ``timeout``."""
    keep: list[str] = Field(default_factory=list)
    """Dotted paths into a JSON response (``*`` maps over a list); the rest is dropped."""
    dry_run: DryRun = None

    def endpoint_fields(self, method: str, default_timeout: float) -> dict[str, Any]:
        """The ``Endpoint`` fields these settings decide, defaults by method filled in."""
        return {
            "examples": tuple(self.examples),
            "risk": self.risk or default_risk(method),
            "resource": self.resource,
            "idempotent": default_idempotent(method)
            if self.idempotent is None
            else self.idempotent,
            "timeout": self.timeout or default_timeout,
            "keep": tuple(self.keep),
            "dry_run": self.dry_run,
        }


"""``describe``: report the request without sending it; a ``DryRunRequest``: send it with
the API's own dry-run switch; ``None``: no dry-run mode."""


@dataclass(frozen=True)
class Wire:
    """Where one ``Params`` field goes in the request."""

    field: str
    location: Location
    name: str | None
    """Path placeholder, query key, header or JSON key; ``None`` for the whole body."""
    explode: bool = True
    """A list in the query: one key per item (``a=1&a=2``), else comma-joined."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    """The action name: ``<connector>.<name>``."""
    method: Method
    url: str
    """Absolute ``http(s)://host[:port]/path?query`` with ``{wire name}`` in the path only."""
    params: type[BaseModel]
    wires: tuple[Wire, ...]
    description: str
    examples: tuple[str, ...] = ()
    risk: Risk = "read"
    resource: str | None = None
    idempotent: bool = False
    timeout: float = 30.0
    keep: tuple[str, ...] = ()
    dry_run: DryRun = None
    body_required: bool = False
    """Send ``{}`` when no body field is set (an OpenAPI ``requestBody`` marked required)."""

    def __post_init__(self) -> None:
        check_template(self.url, {w.name for w in self.wires if w.location == "path"})

    def prepare(
        self, params: BaseModel, *, static_headers: Mapping[str, str], api_dry_run: bool
    ) -> Outgoing:
        """The request for these validated params (with the API's dry-run switch if asked)."""
        values = params.model_dump(mode="json", by_alias=True, exclude_none=True)
        path: dict[str, str] = {}
        query: list[tuple[str, str]] = []
        headers = dict(static_headers)
        body: dict[str, Any] | JsonValue = None
        for wire in self.wires:
            if wire.field not in values:
                continue
            value = values[wire.field]
            if wire.location == "path":
                assert wire.name is not None
                path[wire.name] = quote(text(value), safe="")
            elif wire.location == "query":
                assert wire.name is not None
                items = [text(v) for v in _items(value)]
                if wire.explode:
                    query.extend((wire.name, item) for item in items)
                else:
                    query.append((wire.name, ",".join(items)))
            elif wire.location == "header":
                assert wire.name is not None
                headers[wire.name] = ",".join(text(v) for v in _items(value))
            elif wire.name is None:
                body = value
            else:
                body = {**(body if isinstance(body, dict) else {}), wire.name: value}
        if body is None and self.body_required:
            body = {}
        if api_dry_run and isinstance(self.dry_run, DryRunRequest):
            query.extend(self.dry_run.query.items())
            headers.update(self.dry_run.headers)
            if self.dry_run.body:
                body = {**(body if isinstance(body, dict) else {}), **self.dry_run.body}
        url = URL(render_path(self.url, path), encoded=True)
        if query:
            url = url.extend_query(query)
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        return Outgoing(method=self.method, url=url, headers=headers, body=payload)


def text(value: JsonValue) -> str:
    """A scalar as it appears in a path, query or header."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _items(value: JsonValue) -> list[JsonValue]:
    return list(value) if isinstance(value, list) else [value]


def check_template(url: str, path_names: set[str | None], *, shown: str | None = None) -> None:
    """Refuse a URL template whose placeholders could reach beyond the path, named.

    ``shown`` is the URL as lam.yaml wrote it, when ``url`` is that made absolute.
    """
    match = _TEMPLATE.match(url)
    written = url if shown is None else shown
    if match is None or "@" in match["origin"]:
        raise ValueError(
            f"URL {written!r} must be an absolute http(s) URL (or a path under base_url) with"
            " {placeholders} only in its path, no credentials and no fragment"
        )
    used = set(PLACEHOLDER.findall(match["path"] or ""))
    if missing := used - path_names:
        raise ValueError(
            f"URL {written!r} uses {sorted(missing)}, which are not declared path parameters"
        )
    if unused := {n for n in path_names if n is not None} - used:
        raise ValueError(f"path parameters {sorted(unused)} do not appear in URL {written!r}")
    try:
        URL(render_path(url, dict.fromkeys(used, "x")))
    except ValueError as error:
        raise ValueError(f"URL {written!r} is not valid: {error}") from None


def render_path(template: str, values: Mapping[str, str]) -> str:
    """The template with each placeholder replaced by its already encoded value."""
    match = _TEMPLATE.match(template)
    assert match is not None
    parts: list[str] = []
    last = 0
    path = match["path"] or ""
    for placeholder in PLACEHOLDER.finditer(path):
        parts.append(quote(path[last : placeholder.start()], safe=_PATH_LITERAL_SAFE))
        parts.append(values[placeholder[1]])
        last = placeholder.end()
    parts.append(quote(path[last:], safe=_PATH_LITERAL_SAFE))
    return match["origin"] + "".join(parts) + (match["query"] or "")


def path_segment(value: Any) -> Any:
    """Checks a value bound for one path segment: it must stay exactly one segment."""
    as_text = text(value)
    if as_text in ("", ".", ".."):
        raise ValueError(f"{as_text!r} cannot be a URL path segment")
    return value


def check_header(name: str, value: str | None = None) -> None:
    """Refuse a header LAM must set itself, a malformed name, or a value that breaks lines."""
    if not HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"header {name!r} is set by LAM; credentials go in 'auth'")
    if value is not None:
        header_value(value)


def header_value(value: Any) -> Any:
    """Checks a value bound for a header: control characters would end the header early."""
    if any(unicodedata.category(c) == "Cc" for c in text(value)):
        raise ValueError("must not contain control characters such as line breaks")
    return value
