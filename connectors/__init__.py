"""Connectors: how LAM reaches real systems. The protocol is in ``connectors.base``."""

from connectors._registry import (
    Catalog,
    ConnectorConfig,
    build_connectors,
    connector_types,
    describe_validation_error,
    start_connectors,
)
from connectors.base import Action, ActionContext, ActionResult, Connector, Params
from connectors.shell import ShellConnector

BUILTIN_CONNECTORS: tuple[type[Connector], ...] = (ShellConnector,)
"""Connector types LAM ships; others register under the entry-point group ``lam.connectors``."""

__all__ = [
    "BUILTIN_CONNECTORS",
    "Action",
    "ActionContext",
    "ActionResult",
    "Catalog",
    "Connector",
    "ConnectorConfig",
    "Params",
    "build_connectors",
    "connector_types",
    "describe_validation_error",
    "start_connectors",
]
