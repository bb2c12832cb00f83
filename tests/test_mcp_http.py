"""The mcp connector over streamable HTTP, against the scripted FastMCP server in process:
results, errors, timeouts, limits, changed tool lists, reconnects and header secrets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
import structlog

from bot.errors import ActionFailed, RetryableError
from connectors import Catalog
from connectors._mcp_supervisor import StartFailed
from connectors.mcp import McpConnector
from tests.support.mcp_connector import actions_of, mcp_connector, run_tool, started
from tests.support.mcp_server import PNG_BYTES, ServerState, build_server, serve_http


@pytest.fixture
async def web() -> AsyncIterator[tuple[str, ServerState]]:
    """The scripted server over streamable HTTP: its URL and what its tools observed."""
    server, state = build_server()
    async with serve_http(server) as url:
        yield url, state


async def test_http_tools_run_with_their_results_described(web: tuple[str, ServerState]) -> None:
    """Text is the output, structured content the data, an image is described; risk from hints."""
    url, _ = web
    async with started("web", url=url) as (server, _):
        actions = actions_of(server)
        risks = {tool: actions[f"web.{tool}"].risk for tool in ("lookup", "purge", "touch")}
        assert risks == {"lookup": "read", "purge": "destructive", "touch": "write"}
        assert (await run_tool(server, "lookup", key="k")).output == "value of k"
        assert (await run_tool(server, "touch", name="f")).output == "touched f 1 times"
        assert (await run_tool(server, "picture")).output == f"[image/png, {PNG_BYTES} bytes]"
        stats = await run_tool(server, "stats")
        assert stats.data == {"count": 2, "names": ["a", "b"]}


async def test_a_tool_error_fails_the_step_with_its_message(web: tuple[str, ServerState]) -> None:
    """A result marked isError fails with the tool's own message."""
    url, _ = web
    async with started("web", url=url) as (server, _):
        with pytest.raises(
            ActionFailed, match="MCP tool 'fail' of server 'web' reported an error: .*disk on fire"
        ):
            await run_tool(server, "fail", message="disk on fire")


async def test_a_hanging_tool_times_out_and_is_cancelled_on_the_server(
    web: tuple[str, ServerState],
) -> None:
    """A tool past its timeout fails, and the server is told to cancel it."""
    url, state = web
    async with started("web", url=url, overrides={"hang": {"timeout": 0.5}}) as (server, _):
        with pytest.raises(
            ActionFailed, match="did not answer within 0.45s; LAM asked the server to cancel it"
        ):
            await run_tool(server, "hang")
        assert state.hang_started.is_set()
        await asyncio.wait_for(state.hang_cancelled.wait(), 2)
        assert (await run_tool(server, "lookup", key="after")).output == "value of after"


async def test_ten_megabytes_of_output_are_cut_at_the_limit(web: tuple[str, ServerState]) -> None:
    """A 10 MB result keeps the first output_limit_bytes, says so, and drops oversized data."""
    url, _ = web
    async with started("web", url=url, output_limit_bytes=100_000) as (server, _):
        result = await run_tool(server, "flood", megabytes=10)
    kept, _, note = result.output.partition("\n[output truncated")
    assert kept == "x" * 100_000
    assert "kept the first 100000 of 10485760 bytes]" in note
    assert "[structured content of 10485774 bytes dropped" in note
    assert result.data is None


async def test_list_changed_brings_the_new_tool_into_the_catalog(
    web: tuple[str, ServerState],
) -> None:
    """A tool the server adds and announces becomes an action the catalog offers and runs."""
    url, _ = web
    catalog = Catalog(())
    refreshed = asyncio.Event()

    def changed() -> None:  # what start_connectors passes, and a signal for the test
        catalog.refresh()
        refreshed.set()

    server = mcp_connector("web", url=url)
    await server.start(changed)
    try:
        catalog.connectors = [server]
        catalog.refresh()
        assert "web.fresh" not in catalog
        await run_tool(server, "grow", name="fresh")
        await asyncio.wait_for(refreshed.wait(), 5)
        assert catalog.get("web.fresh").risk == "read"
        assert (await run_tool(server, "fresh")).output == "fresh was added"
    finally:
        await server.aclose()


async def test_a_paginated_tool_list_is_read_to_its_end() -> None:
    """Tools listed a few per page are all found."""
    server, _ = build_server(page_size=3)
    async with serve_http(server) as url, started("web", url=url) as (paged, _):
        assert len(paged.actions()) == len(await server.list_tools()) > 3


@asynccontextmanager
async def on_a_server_that_stopped() -> AsyncIterator[tuple[McpConnector, asyncio.Event, int]]:
    """A connector started on a scripted HTTP server that has stopped since: the connector,
    an event set once it has reconnected, and the port to serve a new server on."""
    server, _ = build_server()
    async with serve_http(server) as url:
        connector = mcp_connector("web", url=url, restart_delay=0.05, restart_delay_max=0.2)
        back = asyncio.Event()
        await connector.start(back.set)
    try:
        yield connector, back, urlsplit(url).port or 0
    finally:
        await connector.aclose()


async def test_http_server_that_goes_away_is_reconnected() -> None:
    """Calls fail clearly while an HTTP server is gone, and work again once it is back."""
    async with on_a_server_that_stopped() as (connector, back, port):
        with pytest.raises(RetryableError, match="MCP server 'web' disconnected: cannot reach it"):
            await run_tool(connector, "lookup", key="k")
        with pytest.raises(
            RetryableError, match="is not available .*reconnecting to it in the background"
        ):
            await run_tool(connector, "lookup", key="k")
        again, _ = build_server()
        async with serve_http(again, port=port):
            await asyncio.wait_for(back.wait(), 5)
            assert (await run_tool(connector, "lookup", key="k")).output == "value of k"


async def test_a_restarted_http_server_that_forgot_the_session_is_reconnected() -> None:
    """A server that lost LAM's session refuses the call unrun (retryable); LAM reconnects."""
    async with on_a_server_that_stopped() as (connector, back, port):
        again, _ = build_server()
        async with serve_http(again, port=port):
            with pytest.raises(
                RetryableError, match="forgotten LAM's session, so tool 'touch' was not run"
            ):
                await run_tool(connector, "touch", name="f")
            await asyncio.wait_for(back.wait(), 5)
            assert (await run_tool(connector, "touch", name="f")).output == "touched f 1 times"


async def test_a_canary_header_secret_never_leaves_the_connector(
    mcp_canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bearer token from a secret reaches the server, and is masked wherever it comes back."""
    # The SDK's debug traces hold raw protocol text (here the server echoing the token):
    # LAM's log pipeline masks the catalog's secrets in them (bot.logs).
    caplog.set_level(logging.INFO)
    server, _ = build_server()
    header = {"Authorization": {"secret": "env:LAM_TEST_CANARY", "prefix": "Bearer "}}
    with structlog.testing.capture_logs() as logs:
        async with serve_http(server, token=mcp_canary) as url:
            async with started("web", url=url, headers=header) as (web, _):
                assert (await run_tool(web, "header", name="authorization")).output == "Bearer ***"
            refused = mcp_connector("web", url=url, headers={"Authorization": "Bearer wrong"})
            with pytest.raises(
                StartFailed, match="did not start: it answered HTTP 401 Unauthorized"
            ):
                await refused.start(lambda: None)
            await refused.aclose()
    assert mcp_canary not in repr(logs)
    assert mcp_canary not in caplog.text
