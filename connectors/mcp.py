"""The ``mcp`` connector: the tools of any Model Context Protocol server, as governed actions.

Each tool the server lists becomes the action ``NAME.<tool>`` (the tool's name in
lower case, ``[a-z0-9_]``), planned, authorised, approved, run and audited like any
other. A server runs as a subprocess over stdio, or is reached over streamable HTTP.

In lam.yaml::

    connectors:
      - type: mcp
        name: git
        settings:
          command: [mcp-server-git, --repository, /srv/app]
          cwd: /srv/app
          env:
            LOG_LEVEL: info
            GITHUB_TOKEN: {secret: env:GITHUB_TOKEN}
          timeout: 30
          tools:
            exclude: [git_reset]
          overrides:
            git_log:
              examples: ["git log of {repo_path}"]
              resource: repo_path
            git_commit:
              risk: destructive

      - type: mcp
        name: tickets
        settings:
          url: https://mcp.example.com/mcp
          headers:
            Authorization: {secret: file:/run/secrets/tickets_token, prefix: "Bearer "}
          tools:
            include: [search_tickets, close_ticket]
          overrides:
            close_ticket: {risk: destructive, resource: ticket_id, timeout: 10}

Risk comes from the tool's annotations: ``readOnlyHint`` makes it ``read``, an explicit
``destructiveHint: true`` makes it ``destructive``, anything else is ``write`` (the MCP
specification's default of "destructive" for unannotated tools is not applied: operators
raise a tool's risk in ``overrides``). Annotations are the server's claims; ``overrides``
is where the operator decides. A tool is idempotent when it says it is read-only or
idempotent. Tools have no dry-run mode.

Arguments are validated before every call (see ``connectors._mcp_schema``). Text content
is joined into the output, other content is described (``[image/png, 1234 bytes]``),
``structuredContent`` becomes the result's data, and a result is capped at
``output_limit_bytes``. A tool that reports ``isError`` fails the step with its message.

A server that crashes fails the calls in flight ("MCP server 'git' exited: ...") and is
restarted with exponential backoff; until it is back, calls fail at once, retryably,
without reaching it. ``notifications/tools/list_changed`` re-lists the tools.

The server's environment holds only PATH, HOME, USER, LOGNAME, SHELL and TERM from LAM's,
plus ``env``. Values written ``{secret: env:NAME}`` or ``{secret: file:/path}`` are
secrets: never logged, and masked wherever a server echoes them (output, errors, stderr).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import ClassVar
from urllib.parse import urlsplit

import structlog
from mcp import types
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from bot.audit import Redactor
from bot.errors import ActionFailed
from connectors._mcp_results import error_text, result_data, result_text
from connectors._mcp_schema import ToolParams
from connectors._mcp_supervisor import Backoff, StartFailed, Supervisor
from connectors._mcp_tools import ToolOverride, ToolSelection, build_actions
from connectors._mcp_transports import HttpTransport, StdioTransport, Transport
from connectors.base import Action, ActionContext, ActionResult, Handler
from connectors.secrets import Secret, secret_values
from connectors.shell import ENV_NAME

log = structlog.get_logger("lam.mcp")

HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
ANSWER_GRACE = 0.5
"""Seconds kept from the executor's budget to cancel a call and report it before it cancels."""


class SecretValue(BaseModel):
    """A value written as a secret reference, with optional text before it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: Secret
    prefix: str = ""
    """Written before the secret, e.g. ``"Bearer "`` for an Authorization header."""

    def reveal(self) -> str:
        return self.prefix + self.secret.get_secret_value()


Value = str | SecretValue


class McpSettings(BaseModel):
    """The ``settings`` of an mcp connector in lam.yaml: ``command`` or ``url``, not both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str] | None = Field(default=None, min_length=1)
    """Runs the server as a subprocess speaking MCP on stdin and stdout."""
    env: dict[str, Value] = Field(default_factory=dict)
    """Variables for the server's environment (with ``command``)."""
    cwd: str | None = None
    """The server's working directory (with ``command``)."""
    url: str | None = None
    """A streamable HTTP endpoint, e.g. ``https://host/mcp``."""
    headers: dict[str, Value] = Field(default_factory=dict)
    """Sent with every request (with ``url``)."""
    tools: ToolSelection = Field(default_factory=ToolSelection)
    overrides: dict[str, ToolOverride] = Field(default_factory=dict)
    """Per tool (by its name on the server): risk, resource, description, examples, timeout."""
    timeout: PositiveFloat = 60.0
    """Seconds a tool call may take, unless its override says otherwise."""
    connect_timeout: PositiveFloat = 10.0
    """Seconds to start or reach the server and list its tools."""
    output_limit_bytes: PositiveInt = 1024 * 1024
    restart_delay: PositiveFloat = 0.5
    """Seconds before the first restart of a crashed server; doubled after each failure."""
    restart_delay_max: PositiveFloat = 30.0

    @model_validator(mode="after")
    def _consistent(self) -> McpSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                "give exactly one of 'command' (a server run over stdio) and 'url'"
                " (a streamable HTTP server)"
            )
        if self.command is not None:
            if not self.command[0]:
                raise ValueError("'command' must start with the program to run")
            if self.headers:
                raise ValueError("'headers' apply to a server at a 'url', not to a 'command'")
            for name, value in self.env.items():
                if not ENV_NAME.match(name) or "\0" in _reveal(value):
                    raise ValueError(f"environment variable {name!r} has an invalid name or value")
        if self.url is not None:
            if self.env or self.cwd is not None:
                raise ValueError("'env' and 'cwd' apply to a 'command', not to a server at a 'url'")
            _check_url(self.url)
            for name, value in self.headers.items():
                if not HEADER_NAME.match(name):
                    raise ValueError(f"header name {name!r} is not a valid HTTP header name")
                if any(c in _reveal(value) for c in "\r\n\0"):
                    raise ValueError(f"header {name!r} has a line break or NUL in its value")
        if self.restart_delay > self.restart_delay_max:
            raise ValueError("'restart_delay' must not be more than 'restart_delay_max'")
        return self


class McpConnector:
    """The tools of one MCP server, one action ``<name>.<tool>`` each."""

    type_name: ClassVar[str] = "mcp"
    Settings: ClassVar[type[BaseModel]] = McpSettings

    def __init__(self, name: str, settings: McpSettings) -> None:
        self.name = name
        self.settings = settings
        self._redactor = Redactor(secret_values(settings))
        self._actions: tuple[Action, ...] = ()
        self._by_tool: dict[str, Action] = {}
        """The actions by the tool's name on the server."""
        self._changed: Callable[[], None] = lambda: None
        self._supervisor = Supervisor(
            name,
            self._transport(),
            tools_seen=self._tools_seen,
            backoff=Backoff(settings.restart_delay, settings.restart_delay_max),
            connect_timeout=settings.connect_timeout,
            mask=self._redactor.text,
        )

    async def start(self, changed: Callable[[], None]) -> None:
        """Start or reach the server and list its tools; raises with the reason if that fails."""
        self._changed = changed
        try:
            await self._supervisor.start()
        except StartFailed as error:
            raise StartFailed(f"MCP server {self._where()} did not start: {error}") from None
        log.info("mcp.started", connector=self.name, tools=len(self._actions))

    def actions(self) -> Sequence[Action]:
        """The tools as last listed; kept while the server restarts, whose calls fail fast."""
        return self._actions

    async def aclose(self) -> None:
        await self._supervisor.aclose()

    def _transport(self) -> Transport:
        settings = self.settings
        if settings.command is not None:
            return StdioTransport(
                settings.command,
                env={name: _reveal(value) for name, value in settings.env.items()},
                cwd=settings.cwd,
                connector=self.name,
                mask=self._redactor.text,
            )
        assert settings.url is not None
        headers = {name: _reveal(value) for name, value in settings.headers.items()}
        return HttpTransport(settings.url, headers=headers)

    def _where(self) -> str:
        if self.settings.command is not None:
            return f"command {self.settings.command[0]!r}"
        return f"at {self.settings.url}"

    def _tools_seen(self, tools: list[types.Tool], first: bool) -> None:
        """Rebuild the actions from a listing; the first listing refuses what is inconsistent."""
        self._by_tool = build_actions(
            self.name, tools, self.settings, handler=self._handler, strict=first
        )
        self._actions = tuple(self._by_tool.values())
        if not first:
            log.info("mcp.tools_changed", connector=self.name, tools=len(self._actions))
            self._changed()

    def _handler(self, tool: str) -> Handler:
        async def run(params: BaseModel, ctx: ActionContext) -> ActionResult:
            return await self.call(tool, params, ctx)

        return run

    async def call(self, tool: str, params: BaseModel, ctx: ActionContext) -> ActionResult:
        """Call ``tool`` with validated ``params``; ``ActionFailed`` says why it did not work."""
        action = self._by_tool.get(tool)
        if action is None:
            raise ActionFailed(
                f"MCP server {self.name!r} no longer offers tool {tool!r}; nothing was run"
            )
        if not isinstance(params, ToolParams):
            raise ActionFailed(f"MCP tool {tool!r} was given {type(params).__name__}, not its own")
        if ctx.dry_run:
            raise ActionFailed(f"MCP tool {tool!r} has no dry-run mode; nothing was run")
        within = min(action.timeout, ctx.timeout) - min(ANSWER_GRACE, ctx.timeout / 10)
        result = await self._supervisor.call(
            tool, params.arguments(), within=within, idempotent=action.idempotent
        )
        limit = self.settings.output_limit_bytes
        if result.isError:
            raise ActionFailed(
                f"MCP tool {tool!r} of server {self.name!r} reported an error:"
                f" {error_text(result, self._redactor.text)}"
            )
        output, truncated = result_text(result, limit, self._redactor.text)
        data, note = result_data(result, limit, self._redactor.text)
        log.info("mcp.tool_called", connector=self.name, tool=tool, truncated=truncated)
        return ActionResult(output=output + note, data=data)


def _reveal(value: Value) -> str:
    return value.reveal() if isinstance(value, SecretValue) else value


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # Never echo it: the part before '@' may be a password.
        raise ValueError(
            "url must not hold credentials; send them in 'headers' as {secret: env:NAME}"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url {url!r} must be an http:// or https:// URL with a host")
