"""REST calls as lam.yaml declares them: a method, a URL template and typed parameters.

Parameters are the shell runbooks' ``ParamSpec`` (string, integer, number, boolean with
pattern, choices, minimum, maximum) plus where each goes: ``in: path | query | header |
body``. Left out, a parameter named in the URL goes in the path, others in the query of a
GET, HEAD, OPTIONS or DELETE, and in the JSON body of the rest.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, create_model, model_validator

from connectors._http_endpoint import (
    PLACEHOLDER,
    Endpoint,
    EndpointSettings,
    Location,
    Method,
    Wire,
    check_header,
    check_template,
    header_value,
    path_segment,
)
from connectors._runbook import NAME, SLOT, ParamSpec
from connectors.base import Params

BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
RELATIVE_BASE = "http://base-url.invalid"
"""Stands in for base_url while a relative URL is checked on its own."""


class HttpParamSpec(ParamSpec):
    """One typed parameter of a declared call, and where it goes in the request."""

    location: Location | None = Field(default=None, alias="in")
    """``path``, ``query``, ``header`` or ``body``; inferred when left out."""
    name: str | None = None
    """The query key, header or JSON key when it differs from the parameter's name."""
    allow_dash: bool = True
    """A leading ``-`` means nothing special in a URL, unlike in an argv."""

    @model_validator(mode="after")
    def _http_types(self) -> HttpParamSpec:
        if self.type == "path":
            raise ValueError(
                "type 'path' names a local file; http parameters are string, integer,"
                " number or boolean"
            )
        if self.location == "path" and self.name is not None:
            raise ValueError("a path parameter is named in the URL by its own name; drop 'name'")
        return self


class HttpCall(EndpointSettings):
    """A declared REST call: one action of the connector."""

    description: str
    method: Method = "GET"
    url: str
    """Absolute, or a path appended to ``base_url``; ``{param}`` placeholders in the path."""
    params: dict[str, HttpParamSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> HttpCall:
        for name, spec in self.params.items():
            if not NAME.match(name):
                raise ValueError(f"parameter name {name!r} must match {NAME.pattern}")
            if name in dir(Params):
                raise ValueError(f"parameter name {name!r} is taken by pydantic; rename it")
            if self.location_of(name) == "body" and self.method in BODYLESS_METHODS:
                raise ValueError(
                    f"parameter {name!r}: a {self.method} request has no body; use in: query"
                )
            if self.location_of(name) == "header":
                check_header(spec.name or name)
        absolute = self.url
        if not absolute.startswith(("http://", "https://")):
            absolute = RELATIVE_BASE + "/" + absolute.lstrip("/")
        check_template(absolute, set(self.path_params), shown=self.url)
        for name in self.path_params:
            if not self.params[name].is_required:
                raise ValueError(f"path parameter {name!r} must be required, with no default")
        if self.resource is not None and self.resource not in self.params:
            raise ValueError(f"resource {self.resource!r} is not one of the parameters")
        for example in self.examples:
            if unknown := set(SLOT.findall(example)) - set(self.params):
                raise ValueError(f"example {example!r} names undeclared slots {sorted(unknown)}")
        return self

    @property
    def path_params(self) -> list[str]:
        return [name for name in self.params if self.location_of(name) == "path"]

    def location_of(self, name: str) -> Location:
        spec = self.params[name]
        if spec.location is not None:
            return spec.location
        if name in PLACEHOLDER.findall(self.url):
            return "path"
        return "query" if self.method in BODYLESS_METHODS else "body"

    def endpoint(self, name: str, base_url: str | None, default_timeout: float) -> Endpoint:
        """This call as an ``Endpoint``; ``ValueError`` names what is wrong."""
        url = self.url
        if not url.startswith(("http://", "https://")):
            if base_url is None:
                raise ValueError(f"call {name!r}: URL {url!r} is relative but base_url is not set")
            url = base_url.rstrip("/") + "/" + url.lstrip("/")
        wires = tuple(
            Wire(field=p, location=self.location_of(p), name=spec.name or p)
            for p, spec in self.params.items()
        )
        try:
            return Endpoint(
                name=name,
                method=self.method,
                url=url,
                params=self._params_model(name),
                wires=wires,
                description=self.description,
                **self.endpoint_fields(self.method, default_timeout),
            )
        except ValueError as error:
            raise ValueError(f"call {name!r}: {error}") from None

    def _params_model(self, call_name: str) -> type[Params]:
        fields: dict[str, Any] = {}
        for name, spec in self.params.items():
            annotation, info = spec.field()
            location = self.location_of(name)
            if location == "path":
                annotation = Annotated[annotation, AfterValidator(path_segment)]
            elif location == "header":
                annotation = Annotated[annotation, AfterValidator(header_value)]
            fields[name] = (annotation, info)
        class_name = "".join(part.title() for part in call_name.split("_")) + "Params"
        return create_model(
            class_name, __base__=Params, __doc__=self.description, __module__=__name__, **fields
        )
