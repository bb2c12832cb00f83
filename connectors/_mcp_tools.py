"""An MCP server's tool listing as LAM actions: selection, ids, risk, overrides.

At start (``strict``) anything inconsistent is an error naming the tool: two tools
that become the same action id, a selection or override naming a tool the server does
not offer, an override naming an argument the tool does not take. When the listing
changes later, such a tool is left out and logged, and the rest keep working.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import structlog
from mcp import types
from pydantic import BaseModel, ConfigDict, PositiveFloat, model_validator

from bot.errors import ConfigError
from bot.models import Risk
from connectors._mcp_schema import ToolSchemaError, UntypedToolParams, field_name, params_model
from connectors._runbook import SLOT
from connectors.base import Action, Handler

if TYPE_CHECKING:
    from connectors.mcp import McpSettings

log = structlog.get_logger("lam.mcp")

DESCRIPTION_CHARS = 1000


class ToolConflict(ValueError):
    """A tool the settings must sort out (a name clash, an override that does not fit).

    Fatal at start; later, the tool is left out. A tool whose schema is unusable
    (``ToolSchemaError``) is always left out, never fatal: it is the server's to fix.
    """


class ToolSelection(BaseModel):
    """Which tools become actions: all, only ``include``, or all but ``exclude``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: list[str] | None = None
    exclude: list[str] = []

    @model_validator(mode="after")
    def _one_way(self) -> ToolSelection:
        if self.include is not None and self.exclude:
            raise ValueError("give 'include' or 'exclude', not both")
        return self


class ToolOverride(BaseModel):
    """What the operator decides about one tool, over what the server says."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    risk: Risk | None = None
    resource: str | None = None
    """The argument that names the target, for resource-scoped policy rules."""
    description: str | None = None
    examples: list[str] | None = None
    """Phrasings for the offline planner, with ``{argument}`` slots."""
    timeout: PositiveFloat | None = None
    idempotent: bool | None = None


def action_name(tool: str) -> str:
    """The action part of an id: ``getUser`` and ``get-user`` both become ``get_user``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", tool)
    return re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")


def risk_of(annotations: types.ToolAnnotations | None) -> Risk:
    if annotations is not None and annotations.readOnlyHint is True:
        return "read"
    if annotations is not None and annotations.destructiveHint is True:
        return "destructive"
    return "write"


def build_actions(
    connector: str,
    tools: list[types.Tool],
    settings: McpSettings,
    *,
    handler: Callable[[str], Handler],
    strict: bool,
) -> dict[str, Action]:
    """One action per selected tool, by tool name; ``ConfigError`` at start if inconsistent."""
    offered = {tool.name: tool for tool in tools}
    problems = _unknown_names(offered, settings)
    if problems and strict:
        raise ConfigError("; ".join(problems))
    for problem in problems:
        log.warning("mcp.settings_stale", connector=connector, problem=problem)
    actions: dict[str, Action] = {}
    owners: dict[str, str] = {}
    for tool in tools:
        if not _selected(tool.name, settings):
            continue
        name = action_name(tool.name)
        try:
            if not name:
                raise ToolConflict("its name has no letter or digit to name an action after")
            if name in owners:
                raise ToolConflict(
                    f"it becomes action {connector}.{name}, as tool {owners[name]!r} does;"
                    " leave one out with tools.exclude"
                )
            override = _override(tool.name, settings.overrides)
            action = _action(connector, name, tool, override, settings, handler(tool.name))
        except (ToolConflict, ToolSchemaError) as problem:
            message = f"MCP tool {tool.name!r} of server {connector!r}: {problem}"
            if strict and isinstance(problem, ToolConflict):
                raise ConfigError(message) from None
            log.warning("mcp.tool_left_out", connector=connector, problem=message)
            continue
        except Exception as error:  # a schema pydantic cannot model must not stop the rest
            message = (
                f"MCP tool {tool.name!r} of server {connector!r}: LAM cannot model its input"
                f" schema: {type(error).__name__}: {error}"
            )
            log.warning("mcp.tool_left_out", connector=connector, problem=message)
            continue
        owners[name] = tool.name
        actions[tool.name] = action
    return actions


def _action(
    connector: str,
    name: str,
    tool: types.Tool,
    override: ToolOverride,
    settings: McpSettings,
    run: Handler,
) -> Action:
    description = (
        override.description
        or (tool.description or "").strip()
        or (tool.annotations.title if tool.annotations and tool.annotations.title else "")
        or tool.title
        or f"The {tool.name!r} tool of MCP server {connector!r}."
    )[:DESCRIPTION_CHARS]
    class_name = "".join(part.title() for part in name.split("_")) + "Params"
    params = params_model(class_name, description, tool.inputSchema)
    properties = tool.inputSchema.get("properties")
    known = set(properties) if isinstance(properties, dict) else set()
    resource = override.resource
    if resource is not None:
        if resource not in known:
            raise ToolConflict(
                f"override resource {resource!r} is not one of its arguments: {sorted(known)}"
            )
        if issubclass(params, UntypedToolParams) and resource not in set(
            tool.inputSchema.get("required") or ()
        ):
            raise ToolConflict(
                f"override resource {resource!r} must be a required argument of a tool"
                " whose schema LAM cannot type"
            )
    for example in override.examples or ():
        if unknown := set(SLOT.findall(example)) - known:
            raise ToolConflict(f"example {example!r} names unknown arguments {sorted(unknown)}")
    annotations = tool.annotations
    hinted_idempotent = annotations is not None and (
        annotations.readOnlyHint is True or annotations.idempotentHint is True
    )
    return Action(
        id=f"{connector}.{name}",
        description=description,
        params=params,
        run=run,
        risk=override.risk or risk_of(annotations),
        examples=tuple(override.examples or ()),
        resource_param=None if resource is None else _field(params, resource),
        supports_dry_run=False,
        idempotent=hinted_idempotent if override.idempotent is None else override.idempotent,
        timeout=override.timeout or settings.timeout,
        tags=("mcp",),
    )


def _field(params: type[BaseModel], argument: str) -> str:
    return argument if issubclass(params, UntypedToolParams) else field_name(argument)


def _selected(tool: str, settings: McpSettings) -> bool:
    names = {tool, action_name(tool)}
    selection = settings.tools
    if selection.include is not None:
        return bool(names & set(selection.include))
    return not names & set(selection.exclude)


def _override(tool: str, overrides: Mapping[str, ToolOverride]) -> ToolOverride:
    return overrides.get(tool) or overrides.get(action_name(tool)) or ToolOverride()


def _unknown_names(offered: Mapping[str, types.Tool], settings: McpSettings) -> list[str]:
    names = set(offered) | {action_name(tool) for tool in offered}
    listing = ", ".join(sorted(offered)) or "none"
    problems = []
    for setting, used in (
        ("tools.include", settings.tools.include or []),
        ("tools.exclude", settings.tools.exclude),
        ("overrides", list(settings.overrides)),
    ):
        if unknown := sorted(set(used) - names):
            problems.append(
                f"{setting} names tools the server does not offer: {', '.join(unknown)};"
                f" it offers: {listing}"
            )
    return problems
