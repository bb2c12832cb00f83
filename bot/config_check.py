"""``lam config check`` and ``lam connectors``: what this installation is configured to run.

The effective configuration is printed with every secret masked: connector settings
hold resolved ``env:``/``file:`` references as ``SecretStr``, and the environment's
tokens are ``SecretStr`` too, so a dump shows ``**********`` where a value would be.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from bot.config import Settings, load_config
from connectors import BUILTIN_CONNECTORS, Catalog, CheckedInstance, check_connectors
from connectors import connector_types as find_connector_types


def check_config(settings: Settings) -> list[CheckedInstance]:
    """Every ``lam.yaml`` instance validated, secrets resolved; ``ConfigError`` if the file
    itself is unreadable or malformed."""
    config = load_config(settings.lam_config)
    return check_connectors(config.connectors, find_connector_types(BUILTIN_CONNECTORS))


def effective_config(settings: Settings, instances: list[CheckedInstance]) -> dict[str, Any]:
    """The settings LAM runs with, as JSON, secrets masked; invalid instances say why."""
    connectors: list[dict[str, Any]] = []
    for instance in instances:
        entry: dict[str, Any] = {"type": instance.config.type, "name": instance.config.name}
        if instance.settings is not None:
            entry["settings"] = _masked(instance.settings)
        else:
            entry["problem"] = instance.problem
        connectors.append(entry)
    return {"environment": _masked(settings, by_alias=True), "connectors": connectors}


def _masked(model: BaseModel, *, by_alias: bool = False) -> Any:
    # JSON mode renders every SecretStr, however nested, as its mask.
    return model.model_dump(mode="json", by_alias=by_alias)


class ConnectorRow(BaseModel):
    name: str
    type: str | None
    state: Literal["ready", "failed"]
    actions: list[str] = []
    reason: str | None = None


ROWS = TypeAdapter(list[ConnectorRow])


def connector_rows(catalog: Catalog) -> list[ConnectorRow]:
    """One row per configured instance: its state and its actions, failed ones with why."""
    rows = [
        ConnectorRow(
            name=connector.name,
            type=connector.type_name,
            state="ready",
            actions=[a.id for a in catalog if a.id.startswith(f"{connector.name}.")],
        )
        for connector in catalog.connectors
    ]
    rows.extend(
        ConnectorRow(name=name, type=None, state="failed", reason=reason)
        for name, reason in catalog.failures.items()
    )
    return sorted(rows, key=lambda row: row.name)


def render_connectors(rows: list[ConnectorRow]) -> str:
    lines: list[str] = []
    for row in rows:
        if row.state == "failed":
            lines.append(f"{row.name}  failed  {row.reason}")
            continue
        lines.append(f"{row.name}  ({row.type})  ready  {len(row.actions)} action(s)")
        lines.extend(f"    {action}" for action in row.actions)
    return "\n".join(lines)
