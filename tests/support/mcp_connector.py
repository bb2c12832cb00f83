"""Helpers for the mcp connector tests: connectors on real MCP servers, and a secret to leak.

A pytest plugin, loaded by ``tests/conftest.py``, for the ``mcp_canary`` fixture; test
modules import the helpers.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Action, ActionResult
from connectors.mcp import McpConnector, McpSettings
from tests.support.connector_actions import run_action

GIT_SERVER = str(Path(sys.executable).parent / "mcp-server-git")
"""The mcp-server-git executable installed next to the test interpreter."""
SCRIPTED_SERVER = str(Path(__file__).parent / "mcp_server.py")
"""The scripted FastMCP server, run as a subprocess over stdio."""
CANARY = "canary-7f3a9c1e-do-not-leak"
CANARY_ENV = "LAM_TEST_CANARY"


def mcp_connector(name: str, **settings: Any) -> McpConnector:
    """An mcp connector named ``name`` with ``settings``, not started."""
    return McpConnector(name, McpSettings.model_validate(settings))


@asynccontextmanager
async def started(name: str, **settings: Any) -> AsyncIterator[tuple[McpConnector, asyncio.Event]]:
    """A started connector and an event set each time it reports changed actions."""
    changed = asyncio.Event()
    connector = mcp_connector(name, **settings)
    await connector.start(changed.set)
    try:
        yield connector, changed
    finally:
        await connector.aclose()


async def run_tool(connector: McpConnector, tool: str, **args: Any) -> ActionResult:
    """Call ``tool`` as the executor would, allowing it its action's own timeout."""
    return await run_action(connector, tool, budget=None, **args)


def actions_of(connector: McpConnector) -> dict[str, Action]:
    return {action.id: action for action in connector.actions()}


@pytest.fixture
def mcp_canary(monkeypatch: pytest.MonkeyPatch) -> str:
    """The canary secret, in the environment variable the tests' secret references name."""
    monkeypatch.setenv(CANARY_ENV, CANARY)
    return CANARY
