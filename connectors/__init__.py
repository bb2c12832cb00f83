"""Connectors: how LAM reaches real systems. The protocol is in ``connectors.base``."""

from connectors._registry import (
    Catalog,
    CheckedInstance,
    ConnectorConfig,
    check_connectors,
    connector_types,
    describe_validation_error,
    start_connectors,
)
from connectors.base import Action, ActionContext, ActionResult, Connector, Params
from connectors.http import HttpConnector
from connectors.mcp import McpConnector
from connectors.postgres import PostgresConnector
from connectors.shell import ShellConnector

BUILTIN_CONNECTORS: tuple[type[Connector], ...] = (
    ShellConnector,
    HttpConnector,
    McpConnector,
    PostgresConnector,
)
"""Connector types LAM ships; others register under the entry-point group ``lam.connectors``."""

__all__ = [
    "BUILTIN_CONNECTORS",
    "Action",
    "ActionContext",
    "ActionResult",
    "Catalog",
    "CheckedInstance",
    "Connector",
    "ConnectorConfig",
    "Params",
    "check_connectors",
    "connector_types",
    "describe_validation_error",
    "start_connectors",
]
