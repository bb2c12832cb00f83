"""A scripted MCP server for the mcp connector's tests, over stdio or streamable HTTP.

``build_server()`` makes a FastMCP server whose tools cover what a connector must handle:
annotated risks, an error, a hang, a flood of output, an image, structured content, and a
tool that adds a tool and announces it. ``serve_http`` serves one in process on
127.0.0.1 (optionally behind a bearer token); run as a program, this file serves one over
stdio, with tools that read its environment and one that kills the process mid-call.

It imports only the SDK and the standard library, so it runs as ``python <this file>``.
"""

from __future__ import annotations

import os
import sys

# Before anything slow: a server told to fail its next starts does so at once.
_FAILURES = os.environ.get("MCP_TEST_FAILURES_FILE")
if __name__ == "__main__" and _FAILURES and os.path.exists(_FAILURES):
    with open(_FAILURES, encoding="utf-8") as _file:
        _left = int(_file.read() or "0")
    if _left > 0:
        with open(_FAILURES, "w", encoding="utf-8") as _file:
            _file.write(str(_left - 1))
        print(f"refusing to start: {_left} failures left", file=sys.stderr, flush=True)
        sys.exit(3)

import asyncio  # noqa: E402 -- after the fast failure above
import signal  # noqa: E402
import socket  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import anyio  # noqa: E402
from mcp.server.fastmcp import Context, FastMCP, Image  # noqa: E402
from mcp.types import ListToolsRequest, ListToolsResult, ToolAnnotations  # noqa: E402
from pydantic import BaseModel  # noqa: E402

READ_ONLY = ToolAnnotations(readOnlyHint=True, idempotentHint=True)
DESTRUCTIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=True)
PNG_BYTES = 1234


class Stats(BaseModel):
    count: int
    names: list[str]


@dataclass
class ServerState:
    """What the tests observe of an in-process server."""

    hang_started: asyncio.Event = field(default_factory=asyncio.Event)
    hang_cancelled: asyncio.Event = field(default_factory=asyncio.Event)


def build_server(
    *, stdio: bool = False, page_size: int | None = None
) -> tuple[FastMCP, ServerState]:
    """A fresh server (a FastMCP HTTP app runs once) and the state its tools report."""
    server = FastMCP("lam-test", log_level="WARNING")
    state = ServerState()

    @server.tool(annotations=READ_ONLY)
    def lookup(key: str) -> str:
        """Look up a key."""
        return f"value of {key}"

    @server.tool(annotations=DESTRUCTIVE)
    def purge(target: str) -> str:
        """Delete everything in a target."""
        return f"purged {target}"

    @server.tool()
    def touch(name: str, times: int = 1) -> str:
        """Touch a name."""
        return f"touched {name} {times} times"

    @server.tool()
    def fail(message: str) -> str:
        """Always fails with the message."""
        raise ValueError(message)

    @server.tool()
    async def hang() -> str:
        """Never answers."""
        state.hang_started.set()
        try:
            await anyio.sleep_forever()
        finally:
            state.hang_cancelled.set()
        return "unreachable"

    @server.tool(annotations=READ_ONLY)
    def flood(megabytes: int) -> str:
        """Answers with that many megabytes of text."""
        return "x" * (megabytes * 1024 * 1024)

    @server.tool(annotations=READ_ONLY)
    def picture() -> Image:
        """Answers with a PNG image."""
        return Image(data=b"\x89PNG" + b"\0" * (PNG_BYTES - 4), format="png")

    @server.tool(annotations=READ_ONLY)
    def stats() -> Stats:
        """Answers with structured content."""
        return Stats(count=2, names=["a", "b"])

    @server.tool()
    async def grow(name: str, ctx: Context) -> str:  # type: ignore[type-arg]
        """Adds a read-only tool called ``name`` and tells the client."""

        def added() -> str:
            return f"{name} was added"

        server.add_tool(
            added, name=name, description="A tool added at run time.", annotations=READ_ONLY
        )
        await ctx.session.send_tool_list_changed()
        return f"added {name}"

    if stdio:
        _add_process_tools(server)
    else:

        @server.tool(annotations=READ_ONLY)
        def header(name: str, ctx: Context) -> str:  # type: ignore[type-arg]
            """Answers with a request header's value."""
            request = ctx.request_context.request
            assert request is not None
            return str(request.headers.get(name))

    if page_size is not None:
        _paginate(server, page_size)
    return server, state


def _add_process_tools(server: FastMCP) -> None:
    @server.tool(annotations=READ_ONLY)
    def env(name: str) -> str:
        """Answers with an environment variable of the server."""
        return os.environ.get(name, "(unset)")

    @server.tool()
    def fail_with_env(name: str) -> str:
        """Fails with an environment variable of the server as the message."""
        raise ValueError(os.environ.get(name, "(unset)"))

    @server.tool(annotations=READ_ONLY)
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    @server.tool()
    def crash(say: str = "", say_env: str = "", fail_next_starts: int = 0) -> str:
        """Kills the server mid-call, after writing to stderr; later starts may fail."""
        if fail_next_starts:
            with open(os.environ["MCP_TEST_FAILURES_FILE"], "w", encoding="utf-8") as file:
                file.write(str(fail_next_starts))
        if say:
            print(say, file=sys.stderr, flush=True)
        if say_env:
            print(f"env says {os.environ.get(say_env)}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return "unreachable"


def _paginate(server: FastMCP, page_size: int) -> None:
    """Serve the tool list ``page_size`` tools at a time, the cursor being the offset."""

    async def paged(request: ListToolsRequest) -> ListToolsResult:
        tools = await server.list_tools()
        start = int(request.params.cursor) if request.params and request.params.cursor else 0
        end = start + page_size
        return ListToolsResult(
            tools=tools[start:end], nextCursor=str(end) if end < len(tools) else None
        )

    # FastMCP has no public hook for paging; its low-level server takes a handler.
    server._mcp_server.list_tools()(paged)


@asynccontextmanager
async def serve_http(
    server: FastMCP, *, token: str | None = None, port: int = 0
) -> AsyncIterator[str]:
    """Serve ``server`` over streamable HTTP on 127.0.0.1 (any free port); yields its URL."""
    import uvicorn
    from starlette.responses import PlainTextResponse
    from starlette.types import Receive, Scope, Send

    inner = server.streamable_http_app()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if token is not None and scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if given != f"Bearer {token}".encode():
                await PlainTextResponse("no valid token", status_code=401)(scope, receive, send)
                return
        await inner(scope, receive, send)

    # Bound before serving: connections wait in the backlog until uvicorn accepts them.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    uvicorn_server = uvicorn.Server(config)
    serving = asyncio.create_task(uvicorn_server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        uvicorn_server.should_exit = True
        await serving
        sock.close()


if __name__ == "__main__":
    build_server(stdio=True)[0].run("stdio")
