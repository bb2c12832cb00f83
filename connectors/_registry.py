"""Finding connector types, building the configured instances, and the action catalog."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points

import structlog
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from pydantic_core import ErrorDetails

from bot.errors import ConfigError, InvalidArguments, UnknownAction
from connectors.base import Action, Connector

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


def build_connectors(
    configs: Iterable[ConnectorConfig], types: Mapping[str, type[Connector]]
) -> list[Connector]:
    """One connector per configured instance; a bad instance stops start-up, named."""
    connectors: list[Connector] = []
    seen: set[str] = set()
    for config in configs:
        if config.name in seen:
            raise ConfigError(f"connector name {config.name!r} is used twice in lam.yaml")
        seen.add(config.name)
        connector_type = types.get(config.type)
        if connector_type is None:
            raise ConfigError(
                f"connector {config.name!r} has unknown type {config.type!r};"
                f" known types: {', '.join(sorted(types))}"
            )
        try:
            settings = connector_type.Settings.model_validate(config.settings)
        except ValidationError as error:
            raise ConfigError(
                f"connector {config.name!r} ({config.type}): invalid settings: "
                + "; ".join(describe_validation_error(e) for e in error.errors())
            ) from error
        connectors.append(connector_type(config.name, settings))
    return connectors


def describe_validation_error(error: ErrorDetails) -> str:
    """One pydantic error as ``field: message``, the way LAM reports bad arguments."""
    location = ".".join(str(part) for part in error["loc"])
    # pydantic prefixes messages from custom validators; the field name says enough.
    message = error["msg"].removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


class Catalog:
    """Every action LAM can plan, by id."""

    def __init__(self, connectors: Iterable[Connector]) -> None:
        self.connectors = list(connectors)
        self._actions: dict[str, Action] = {}
        for connector in self.connectors:
            for action in connector.actions():
                if action.id in self._actions:
                    raise ConfigError(f"action {action.id!r} is declared twice")
                self._actions[action.id] = action

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
