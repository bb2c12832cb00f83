"""The ``http`` connector: declared REST calls and imported OpenAPI operations.

Every request, and every redirect hop, goes only to a host on the instance's allow-list
(by default the hosts of its ``base_url``, declared URLs and ``openapi`` URL); redirects
are followed by hand and drop credentials once they leave the first origin. Arguments
cannot change the host: a path value is one percent-encoded segment. Bodies are read up
to ``max_response_bytes``; a failed idempotent call (5xx, 408, 429, connection error,
timeout) raises ``RetryableError`` so the executor retries it with backoff. Credentials
come from secret references and are masked in everything the connector returns.

Dry run, per call or operation: ``dry_run: describe`` reports the request without sending
it; ``dry_run: {query: {dryRun: "true"}}`` (also ``headers:``, ``body:``) sends it with the
API's own dry-run switch; without ``dry_run`` the action has no dry-run mode.

In lam.yaml::

    connectors:
      - type: http
        name: deploy
        settings:
          base_url: https://deploy.example.com/v1
          auth: {type: bearer, token: env:DEPLOY_TOKEN}
          # or {type: basic, username: lam, password: file:/run/secrets/deploy}
          # or {type: header, name: X-Api-Key, value: env:DEPLOY_KEY}
          allow_hosts: [deploy.example.com]   # host (ports 80/443), host:port, *.domain
          calls:
            restart_service:
              description: Restart one service.
              method: POST
              url: /services/{service}/restart
              params:
                service: {type: string, pattern: "[a-z][a-z0-9-]*"}
                reason: {type: string, required: false}            # JSON body
                wait: {type: boolean, default: false, in: query}
              resource: service
              examples: ["restart {service}", "restart the {service} service"]
              keep: [job.id, status]
              dry_run: {query: {dryRun: "true"}}
      - type: http
        name: inventory
        settings:
          openapi: https://inventory.example.com/openapi.json
          operations: [getHost]
          tags: [reports]
          operation_settings:
            getHost: {resource: host, examples: ["show host {host}"], dry_run: describe}
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator
from yarl import URL

from bot.errors import ActionFailed, ConfigError, RetryableError
from connectors import _http_response as response
from connectors import _openapi as openapi
from connectors._egress import AllowedHost, AllowList, EgressRefused, Outgoing, send
from connectors._http_calls import HttpCall
from connectors._http_endpoint import HEADER_NAME, Endpoint, check_header, check_template
from connectors._http_schema import SchemaConverter
from connectors._openapi import OperationSettings
from connectors._runbook import NAME
from connectors.base import Action, ActionContext, ActionResult, Handler
from connectors.secrets import Secret

log = structlog.get_logger("lam.http")

RETRYABLE_STATUSES = frozenset({408, 429})
DOCUMENT_MAX_BYTES = 32 * 1024 * 1024
"""OpenAPI documents of large APIs run to megabytes; responses keep their own cap."""
TIMEOUT_GRACE = 0.5
"""Seconds kept from the executor's budget so the connector reports its own timeout."""
DEFAULT_ACCEPT = "application/json, text/plain;q=0.9, */*;q=0.1"


class BearerAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["bearer"]
    token: Secret


class BasicAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["basic"]
    username: str
    password: Secret

    def encoded(self) -> str:
        """``username:password`` as the Authorization header carries it."""
        credentials = f"{self.username}:{self.password.get_secret_value()}"
        return base64.b64encode(credentials.encode()).decode()

    def secret_parts(self) -> list[str]:
        """The encoded form: a server echoing the header echoes this, not the password."""
        return [self.encoded()]


class HeaderAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["header"]
    name: str = Field(pattern=HEADER_NAME.pattern)
    value: Secret


Auth = Annotated[BearerAuth | BasicAuth | HeaderAuth, Field(discriminator="type")]


class HttpSettings(BaseModel):
    """The ``settings`` of an http connector in lam.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = None
    """Prefix of relative call URLs and of OpenAPI paths (overrides ``servers[0].url``)."""
    auth: Auth | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    """Headers sent with every request (not credentials: those go in ``auth``)."""
    allow_hosts: list[str] | None = None
    """Default: the hosts and ports of base_url, the declared URLs and the openapi URL."""
    calls: dict[str, HttpCall] = Field(default_factory=dict)
    openapi: str | None = None
    """Path or http(s) URL of an OpenAPI 3 document (JSON or YAML), read at start."""
    operations: list[str] = Field(default_factory=list)
    """operationIds to import from ``openapi``."""
    tags: list[str] = Field(default_factory=list)
    """Import every operation carrying one of these tags."""
    operation_settings: dict[str, OperationSettings] = Field(default_factory=dict)
    timeout: float = Field(default=30.0, gt=0)
    """Seconds per call unless the call or operation sets its own."""
    max_response_bytes: PositiveInt = 1024 * 1024
    max_redirects: NonNegativeInt = 5

    @model_validator(mode="after")
    def _consistent(self) -> HttpSettings:
        if self.base_url is not None:
            check_template(self.base_url, set())
        for name in self.calls:
            if not NAME.match(name):
                raise ValueError(f"call name {name!r} must match {NAME.pattern}")
        for header, value in self.headers.items():
            check_header(header, value)
        for entry in self.allow_hosts or ():
            AllowedHost.parse(entry)
        if self.openapi is None and (self.operations or self.tags or self.operation_settings):
            raise ValueError("operations, tags and operation_settings need 'openapi'")
        if self.openapi is not None and not (self.operations or self.tags):
            raise ValueError(
                "'openapi' needs 'operations' or 'tags' to choose what to import; LAM never"
                " imports a whole API"
            )
        if self.openapi is None and not self.calls:
            raise ValueError("declare 'calls', or 'openapi' with 'operations' or 'tags'")
        return self

    @property
    def openapi_url(self) -> URL | None:
        if self.openapi is None or not self.openapi.startswith(("http://", "https://")):
            return None
        return URL(self.openapi)


class HttpConnector:
    """Calls one REST API: each declared call or imported operation is one action."""

    type_name: ClassVar[str] = "http"
    Settings: ClassVar[type[BaseModel]] = HttpSettings

    def __init__(self, name: str, settings: HttpSettings) -> None:
        self.name = name
        self.settings = settings
        try:
            self._endpoints: dict[str, Endpoint] = {
                n: call.endpoint(n, settings.base_url, settings.timeout)
                for n, call in settings.calls.items()
            }
        except ValueError as error:
            raise ConfigError(str(error)) from None
        declared = [URL(e.url.split("{")[0]) for e in self._endpoints.values()]
        if settings.base_url is not None:
            declared.append(URL(settings.base_url))
        if settings.openapi_url is not None:
            declared.append(settings.openapi_url)
        explicit = settings.allow_hosts is not None
        entries = (
            [AllowedHost.parse(entry) for entry in settings.allow_hosts or ()]
            if explicit
            else [AllowedHost.origin_of(url) for url in declared]
        )
        self.allow = AllowList(name, entries)
        for url in declared:
            self._check_declared(url)
        self._credentials, self._secrets = _credentials(settings.auth)
        self._headers = {"Accept": DEFAULT_ACCEPT, **settings.headers}
        self._session: aiohttp.ClientSession | None = None

    async def start(self, changed: Callable[[], None]) -> None:
        """Opens the shared session and imports the selected OpenAPI operations."""
        self._session = aiohttp.ClientSession(
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        if self.settings.openapi is None:
            return
        document_url = self.settings.openapi_url
        raw = await self._read_document()
        source = repr(self.settings.openapi)
        document = openapi.parse_document(raw, source)
        base_url = self.settings.base_url or openapi.server_url(document, document_url)
        if base_url is None:
            raise ConfigError(
                f"OpenAPI document {source} names no absolute server URL; set base_url"
            )
        base = URL(base_url)
        if self.settings.allow_hosts is None and document_url is None:
            # A local document is the operator's own: its server counts as declared.
            self.allow = AllowList(self.name, [*self.allow.entries, AllowedHost.origin_of(base)])
        self._check_declared(base)
        selected = openapi.select(document, self.settings.operations, self.settings.tags, source)
        known = {operation.id for operation in selected}
        if unknown := set(self.settings.operation_settings) - known:
            raise ConfigError(
                f"operation_settings names operations that are not imported: {sorted(unknown)}"
            )
        converter = SchemaConverter(document)
        for operation in selected:
            endpoint = openapi.endpoint(
                operation,
                converter,
                base_url=base_url,
                settings=self.settings.operation_settings.get(operation.id, OperationSettings()),
                default_timeout=self.settings.timeout,
            )
            if endpoint.name in self._endpoints:
                raise ConfigError(
                    f"operation {operation.id!r} becomes action {self.name}.{endpoint.name},"
                    " which another call or operation already is"
                )
            self._endpoints[endpoint.name] = endpoint
        log.info("http.imported", connector=self.name, operations=len(selected))

    def actions(self) -> Sequence[Action]:
        return [
            Action(
                id=f"{self.name}.{endpoint.name}",
                description=endpoint.description,
                params=endpoint.params,
                run=self._handler(endpoint),
                risk=endpoint.risk,
                examples=endpoint.examples,
                resource_param=endpoint.resource,
                supports_dry_run=endpoint.dry_run is not None,
                idempotent=endpoint.idempotent,
                timeout=endpoint.timeout,
            )
            for endpoint in self._endpoints.values()
        ]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _handler(self, endpoint: Endpoint) -> Handler:
        async def run(params: BaseModel, ctx: ActionContext) -> ActionResult:
            try:
                result = await self.call(endpoint, params, ctx)
            except ActionFailed as error:
                # Re-raised as the same type: a retryable failure stays retryable.
                raise type(error)(response.redact_text(str(error), self._secrets)) from None
            return ActionResult(
                output=response.redact_text(result.output, self._secrets),
                data=response.redact(result.data, self._secrets),
            )

        return run

    async def call(self, endpoint: Endpoint, params: BaseModel, ctx: ActionContext) -> ActionResult:
        """Send the endpoint's request for ``params``; ``ActionFailed`` says why it failed."""
        action = f"{self.name}.{endpoint.name}"
        if self._session is None:
            raise ActionFailed(
                f"{action}: connector {self.name!r} is not started; nothing was sent"
            )
        if ctx.dry_run and endpoint.dry_run is None:
            raise ActionFailed(f"{action} has no dry-run mode; nothing was sent")
        request = endpoint.prepare(params, static_headers=self._headers, api_dry_run=ctx.dry_run)
        if ctx.dry_run and endpoint.dry_run == "describe":
            self.allow.check(request.url, context=f"{action}: dry run")
            return self._describe(request)
        context = f"{action}: {request.method} {request.url.path}"
        budget = min(endpoint.timeout, ctx.timeout - min(TIMEOUT_GRACE, ctx.timeout / 10))
        try:
            async with asyncio.timeout(budget):
                received = await send(
                    self._session,
                    request,
                    credentials=self._credentials,
                    allow=self.allow,
                    context=context,
                    max_redirects=self.settings.max_redirects,
                    max_bytes=self.settings.max_response_bytes,
                )
        except TimeoutError:
            raise _failure(endpoint, f"{context}: no response within {budget:g}s") from None
        except (aiohttp.ClientError, OSError) as error:
            problem = str(error) or type(error).__name__
            raise _failure(endpoint, f"{context}: request failed: {problem}") from None
        if 200 <= received.status < 300:
            return response.result(received, endpoint.keep, context=context)
        problem = f"{context}: HTTP {received.status} {received.reason}".rstrip()
        if body := response.excerpt(received):
            problem += f": {body}"
        if received.status >= 500 or received.status in RETRYABLE_STATUSES:
            raise _failure(endpoint, problem)
        raise ActionFailed(problem)

    def _describe(self, request: Outgoing) -> ActionResult:
        body = None if request.body is None else request.body.decode()
        credentials = f" (plus {self.settings.auth.type} credentials)" if self.settings.auth else ""
        lines = [f"dry run: would send {request.method} {request.url}{credentials}"]
        if body is not None:
            lines.append(f"body: {body}")
        return ActionResult(
            output="\n".join(lines),
            data={
                "method": request.method,
                "url": str(request.url),
                "headers": dict(request.headers),
                "body": body,
            },
        )

    def _check_declared(self, url: URL) -> None:
        """A declared URL the allow-list refuses is a configuration error, found at once."""
        try:
            self.allow.check(url, context=f"connector {self.name!r}: URL {str(url)!r}")
        except EgressRefused as error:
            raise ConfigError(str(error)) from None

    async def _read_document(self) -> bytes:
        location = self.settings.openapi
        assert location is not None and self._session is not None
        url = self.settings.openapi_url
        if url is None:
            try:
                return await asyncio.to_thread(Path(location).read_bytes)
            except OSError as error:
                raise ConfigError(
                    f"cannot read OpenAPI document {location!r}: {error.strerror}"
                ) from None
        context = f"loading OpenAPI document {location!r}"
        try:
            received = await send(
                self._session,
                Outgoing(method="GET", url=url, headers=self._headers),
                credentials={},
                allow=self.allow,
                context=context,
                max_redirects=self.settings.max_redirects,
                max_bytes=DOCUMENT_MAX_BYTES,
            )
        except (aiohttp.ClientError, OSError) as error:
            raise ConfigError(f"{context}: {error or type(error).__name__}") from None
        if received.status != 200:
            raise ConfigError(f"{context}: HTTP {received.status} {received.reason}")
        return received.body


def _failure(endpoint: Endpoint, problem: str) -> ActionFailed:
    """A transient failure: retryable when repeating the call is safe."""
    if endpoint.idempotent:
        return RetryableError(problem)
    return ActionFailed(f"{problem}; not retried, as this {endpoint.method} is not idempotent")


def _credentials(
    auth: BearerAuth | BasicAuth | HeaderAuth | None,
) -> tuple[dict[str, str], list[str]]:
    """The auth headers, and every form of the secret to mask in what the connector returns."""
    if auth is None:
        return {}, []
    if isinstance(auth, BearerAuth):
        token = auth.token.get_secret_value()
        return {"Authorization": f"Bearer {token}"}, [token]
    if isinstance(auth, BasicAuth):
        encoded = auth.encoded()
        return {"Authorization": f"Basic {encoded}"}, sorted(
            [encoded, auth.password.get_secret_value()], key=len, reverse=True
        )
    value = auth.value.get_secret_value()
    return {auth.name: value}, [value]
