"""The connector protocol: what a connector declares and how LAM calls it.

A connector never decides whether it may act: policy and approvals wrap every call
in ``bot.execution``. A connector only validates its own arguments and does the work.

Lifecycle: LAM builds one instance per ``lam.yaml`` entry, awaits ``start``, then reads
``actions``; ``aclose`` at shutdown. Settings fields that hold credentials are typed
``connectors.secrets.Secret``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, JsonValue

from bot.models import Risk


class Params(BaseModel):
    """Base of every action's arguments: unknown keys are an error, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ActionResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    output: str = ""
    """Human-readable output; the executor caps what it keeps."""
    data: JsonValue = None
    """Structured output a later step may refer to."""
    sandboxed: bool | None = None
    """Whether the action ran inside a sandbox; ``None`` when that does not apply."""


@dataclass(frozen=True)
class ActionContext:
    request_id: str
    step_id: str
    environment: str
    dry_run: bool
    idempotency_key: str
    """Stable per step across retries and redeliveries, for connectors that de-duplicate."""
    timeout: float
    """Seconds the executor allows this attempt; a connector may use it to stop early."""


Handler = Callable[[BaseModel, ActionContext], Awaitable[ActionResult]]


@dataclass(frozen=True)
class Action:
    """One thing LAM can do, as the planner, policy and executor see it."""

    id: str
    """``connector.action``, e.g. ``shell.disk_usage``."""
    description: str
    params: type[BaseModel]
    run: Handler
    risk: Risk = "read"
    examples: tuple[str, ...] = ()
    """Phrasings with ``{slot}`` placeholders, used by the offline planner."""
    resource_param: str | None = None
    """The argument that names the target, for resource-scoped policy rules."""
    supports_dry_run: bool = False
    idempotent: bool = False
    timeout: float = 60.0
    tags: tuple[str, ...] = field(default=())

    def resource(self, params: BaseModel) -> str:
        if self.resource_param is None:
            return "*"
        value = getattr(params, self.resource_param)
        return "*" if value is None else str(value)


@runtime_checkable
class Connector(Protocol):
    """A connector type, registered under the entry-point group ``lam.connectors``.

    LAM builds one instance per entry in ``lam.yaml`` (``type``, ``name``, ``settings``)
    with the settings validated by ``Settings``.
    """

    type_name: ClassVar[str]
    Settings: ClassVar[type[BaseModel]]
    name: str

    # Each connector takes its own Settings model; Any here lets every connector's
    # narrower __init__ satisfy the protocol (parameters are contravariant).
    def __init__(self, name: str, settings: Any) -> None: ...

    async def start(self, changed: Callable[[], None]) -> None:
        """Connect and discover actions; raising fails this instance alone, with the reason.

        A connector whose actions change later (an MCP server's ``list_changed``) calls
        ``changed()`` so the catalog asks ``actions()`` again.
        """
        ...

    def actions(self) -> Sequence[Action]:
        """The actions as of now; ids are ``NAME.action``."""
        ...

    async def aclose(self) -> None: ...
