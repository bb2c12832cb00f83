"""Finding connector types, building the configured instances, and the action catalog."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points

import structlog
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from pydantic_core import ErrorDetails

from bot.errors import ConfigError, InvalidArguments, UnknownAction
from connectors.base import Action, Connector
from connectors.secrets import secret_values

ENTRY_POINT_GROUP = "lam.connectors"

log = structlog.get_logger("lam.connectors")


class ConnectorConfig(BaseModel):
    """One connector instance as ``lam.yaml`` declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    settings: dict[str, JsonValue] = Field(default_factory=dict)


def connector_types(builtin: Sequence[type[Connector]]) -> dict[str, type[Connector]]:
    """Built-in connector types, then those other packages register as entry points."""
    found = {connector.type_name: connector for connector in builtin}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in found:
            continue
        try:
            loaded = entry_point.load()
        except Exception as error:  # a broken plugin must not stop LAM from starting
            log.warning("connector.plugin_failed", plugin=entry_point.name, error=str(error))
            continue
        found[entry_point.name] = loaded
    return found


@dataclass(frozen=True)
class CheckedInstance:
    """One ``lam.yaml`` instance with its validated settings, or why they are not valid."""

    config: ConnectorConfig
    connector_type: type[Connector] | None
    settings: BaseModel | None
    problem: str | None


def check_connectors(
    configs: Iterable[ConnectorConfig], types: Mapping[str, type[Connector]]
) -> list[CheckedInstance]:
    """Validate every instance's type and settings (secrets resolved); nothing starts.

    Two instances with one name are a configuration error: action ids would clash.
    """
    checked: list[CheckedInstance] = []
    seen: set[str] = set()
    for config in configs:
        if config.name in seen:
            raise ConfigError(f"connector name {config.name!r} is used twice in lam.yaml")
        seen.add(config.name)
        connector_type = types.get(config.type)
        if connector_type is None:
            problem = (
                f"connector {config.name!r} has unknown type {config.type!r};"
                f" known types: {', '.join(sorted(types))}"
            )
            checked.append(CheckedInstance(config, None, None, problem))
            continue
        try:
            settings = connector_type.Settings.model_validate(config.settings)
        except ValidationError as error:
            problem = f"connector {config.name!r} ({config.type}): " + "; ".join(
                describe_validation_error(e) for e in error.errors()
            )
            checked.append(CheckedInstance(config, connector_type, None, problem))
            continue
        checked.append(CheckedInstance(config, connector_type, settings, None))
    return checked


def _build(
    configs: Iterable[ConnectorConfig], types: Mapping[str, type[Connector]]
) -> tuple[list[Connector], dict[str, str], list[str]]:
    connectors: list[Connector] = []
    failures: dict[str, str] = {}
    secrets: list[str] = []
    for instance in check_connectors(configs, types):
        name = instance.config.name
        if instance.problem is not None or instance.connector_type is None:
            failures[name] = instance.problem or f"connector {name!r} is not valid"
            continue
        secrets.extend(secret_values(instance.settings))
        try:
            connectors.append(instance.connector_type(name, instance.settings))
        except ConfigError as error:
            failures[name] = f"connector {name!r} ({instance.config.type}): {error}"
    return connectors, failures, secrets


async def start_connectors(
    configs: Iterable[ConnectorConfig],
    types: Mapping[str, type[Connector]],
    *,
    start_within: float = 15.0,
) -> Catalog:
    """Build and start every configured instance; one that fails is reported, not fatal.

    Instances start concurrently, each within ``start_within`` seconds. The catalog names
    each failed instance with its reason (``lam actions``, ``/readyz``); the others'
    actions work as usual.
    """
    connectors, failures, secrets = _build(configs, types)
    catalog = Catalog((), failures=failures)
    catalog.secrets = secrets

    async def start(connector: Connector) -> Connector | None:
        try:
            async with asyncio.timeout(start_within):
                await connector.start(catalog.refresh)
        except Exception as error:  # any failure to start fails this instance alone
            reason = str(error) or type(error).__name__
            if isinstance(error, TimeoutError):
                reason = f"did not start within {start_within:g} s"
            catalog.failures[connector.name] = f"connector {connector.name!r}: {reason}"
            log.warning("connector.failed", connector=connector.name, reason=reason)
            with contextlib.suppress(Exception):
                await connector.aclose()
            return None
        return connector

    started = await asyncio.gather(*(start(connector) for connector in connectors))
    catalog.connectors = [connector for connector in started if connector is not None]
    catalog.refresh()
    return catalog


def describe_validation_error(error: ErrorDetails) -> str:
    """One pydantic error as ``field: message``, the way LAM reports bad arguments."""
    location = ".".join(str(part) for part in error["loc"])
    # pydantic prefixes messages from custom validators; the field name says enough.
    message = error["msg"].removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


class Catalog:
    """Every action LAM can plan, by id."""

    def __init__(
        self, connectors: Iterable[Connector], *, failures: Mapping[str, str] | None = None
    ) -> None:
        self.connectors = list(connectors)
        self.failures: dict[str, str] = dict(failures or {})
        """Connector instances that could not start, by name, with the reason."""
        self.secrets: list[str] = []
        """The resolved secrets of the connectors' settings, for the redactor."""
        self._actions: dict[str, Action] = {}
        self.refresh(strict=True)

    def refresh(self, *, strict: bool = False) -> None:
        """Read every connector's actions again (a connector's tools changed).

        At start (``strict``) an id declared twice is a configuration error; later, the
        second declaration is ignored and logged, and the catalog keeps working.
        """
        actions: dict[str, Action] = {}
        for connector in self.connectors:
            for action in connector.actions():
                if action.id in actions:
                    if strict:
                        raise ConfigError(f"action {action.id!r} is declared twice")
                    log.warning("connector.duplicate_action", action=action.id)
                    continue
                actions[action.id] = action
        self._actions = actions

    @classmethod
    def of(cls, actions: Iterable[Action]) -> Catalog:
        """A catalog of loose actions, for tests and benchmarks."""
        catalog = cls(())
        for action in actions:
            catalog._actions[action.id] = action
        return catalog

    def restricted(self, action_ids: Iterable[str]) -> Catalog:
        """A catalog of only these actions (those a requester may run or request)."""
        catalog = Catalog.of(self._actions[a] for a in action_ids if a in self._actions)
        catalog.connectors = self.connectors
        catalog.failures = self.failures
        return catalog

    def __iter__(self) -> Iterator[Action]:
        return iter(sorted(self._actions.values(), key=lambda action: action.id))

    def __len__(self) -> int:
        return len(self._actions)

    def __contains__(self, action_id: object) -> bool:
        return action_id in self._actions

    def get(self, action_id: str) -> Action:
        """The action named ``action_id``; ``UnknownAction`` with the closest ids otherwise."""
        action = self._actions.get(action_id)
        if action is None:
            raise UnknownAction(action_id, self.closest(action_id))
        return action

    def closest(self, action_id: str, n: int = 3) -> list[str]:
        return difflib.get_close_matches(action_id, list(self._actions), n=n, cutoff=0.5)

    def validate(self, action_id: str, args: Mapping[str, JsonValue]) -> BaseModel:
        """The action's ``Params`` built from ``args``; ``InvalidArguments`` says what is wrong."""
        action = self.get(action_id)
        try:
            return action.params.model_validate(dict(args))
        except ValidationError as error:
            raise InvalidArguments(
                action_id, [describe_validation_error(e) for e in error.errors()]
            ) from error
