"""One MCP server kept connected: connect, list tools, follow changes, restart after a crash.

One asyncio task owns the connection (anyio task groups must close in the task that
opened them); tool calls come from the executor's tasks and share the session. When the
connection ends, every call in flight fails at once with the reason, the task waits
(exponential backoff, bounded) and connects again; meanwhile calls fail fast without
reaching the server. The backoff starts over once a connection has lasted as long as
the longest delay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, types
from mcp.shared.exceptions import McpError
from mcp.shared.message import SessionMessage
from mcp.shared.session import RequestResponder

from bot.errors import ActionFailed, LamError, RetryableError
from connectors._mcp_transports import Mask, Transport, describe_failure, root_cause

log = structlog.get_logger("lam.mcp")

CLOSE_GRACE = 6.0
"""Seconds ``aclose`` waits for a clean shutdown (the SDK gives a server 2 s, then
terminates it, 2 s more) before it cancels."""
CANCEL_NOTICE_WITHIN = 1.0
MAX_TOOL_PAGES = 100
SESSION_TERMINATED = 32600
"""What the SDK reports when a streamable HTTP server answers 404 for LAM's session."""

ToolsSeen = Callable[[list[types.Tool], bool], None]
"""Called with every tool listing, and whether it is the first; may raise to refuse it."""


@dataclass(frozen=True)
class Backoff:
    initial: float
    maximum: float

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after ``failures`` failures in a row."""
        return min(self.maximum, self.initial * 2.0 ** (failures - 1))


class StartFailed(Exception):
    """The first connection failed; the message is the reason."""


@dataclass
class _Live:
    session: ClientSession
    closed: asyncio.Future[str]
    """Resolves with the reason once the connection has ended and been cleaned up."""
    opened_at: float


@dataclass
class _Down:
    reason: str
    retry_at: float | None
    """Loop time of the next attempt; ``None`` while connecting."""


class Supervisor:
    """Keeps one MCP session open for the connector and runs its tool calls."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        tools_seen: ToolsSeen,
        backoff: Backoff,
        connect_timeout: float,
        mask: Mask,
    ) -> None:
        self.name = name
        self._transport = transport
        self._tools_seen = tools_seen
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._mask = mask
        self._task: asyncio.Task[None] | None = None
        self._live: _Live | None = None
        self._down = _Down("it has not started yet", None)
        self._phase: Literal["connecting", "connected", "waiting"] = "connecting"
        self._stopping = False
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._connection_lost = False
        self._relist = False
        self._restart_reason: str | None = None

    async def start(self) -> None:
        """Connect and list the tools; ``StartFailed`` says why that did not work."""
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(first), name=f"mcp:{self.name}")
        # Shielded: a caller giving up on start must not look, to the task, like success.
        await asyncio.shield(first)

    async def aclose(self) -> None:
        """Close the session and stop the server; calls in flight fail with the reason."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        task = self._task
        if task is None:
            return
        if self._phase == "connecting" and not task.done():
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=CLOSE_GRACE)
        if not done:
            log.warning("mcp.close_forced", connector=self.name)
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("mcp.supervisor_crashed", connector=self.name, error=repr(error))

    async def call(
        self, tool: str, arguments: dict[str, Any], *, within: float, idempotent: bool
    ) -> types.CallToolResult:
        """Call ``tool``; ``ActionFailed`` (retryable when safe) says why it did not answer."""
        live = self._live
        if live is None:
            raise self._not_running(tool)
        request_ids: list[int] = []

        async def send() -> types.CallToolResult:
            # The SDK numbers requests itself and does not say which number it used; read
            # right before the call (nothing else runs in between), it names the request
            # to cancel on the server if the call times out.
            request_ids.append(live.session._request_id)
            return await live.session.call_tool(tool, arguments)

        sending = asyncio.create_task(send())
        try:
            waiting: set[asyncio.Future[Any]] = {sending, live.closed}
            await asyncio.wait(waiting, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sending.done():
                await _discard(sending)
        if not sending.cancelled():
            return await self._answer(live, sending, tool, idempotent)
        if live.closed.done():
            raise self._lost_error(tool, live.closed.result(), idempotent)
        await self._cancel_on_server(live, request_ids, within)
        raise ActionFailed(
            f"MCP tool {tool!r} of server {self.name!r} did not answer within {within:g}s;"
            " LAM asked the server to cancel it"
        )

    async def _answer(
        self, live: _Live, sending: asyncio.Task[types.CallToolResult], tool: str, idempotent: bool
    ) -> types.CallToolResult:
        try:
            return sending.result()
        except McpError as error:
            if error.error.code == types.CONNECTION_CLOSED:
                raise self._lost_error(tool, await _reason(live), idempotent) from None
            if error.error.code == SESSION_TERMINATED:
                self._restart(live, "the server no longer knows LAM's session")
                raise RetryableError(
                    f"MCP server {self.name!r} had forgotten LAM's session, so tool {tool!r}"
                    " was not run; LAM is reconnecting"
                ) from None
            raise ActionFailed(
                f"MCP server {self.name!r} refused to run tool {tool!r}:"
                f" {self._mask(error.error.message)}"
            ) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise self._lost_error(tool, await _reason(live), idempotent) from None
        except RuntimeError as error:
            # The SDK checks structured content against the tool's output schema.
            raise ActionFailed(
                f"MCP tool {tool!r} of server {self.name!r} returned a malformed result:"
                f" {self._mask(str(error))}"
            ) from None

    def _not_running(self, tool: str) -> ActionFailed:
        if self._stopping:
            return ActionFailed(f"MCP connector {self.name!r} is closed; tool {tool!r} was not run")
        down = self._down
        if down.retry_at is None:
            when = "it is connecting now"
        else:
            wait = max(0.0, down.retry_at - asyncio.get_running_loop().time())
            when = f"next attempt in {wait:.1f}s"
        return RetryableError(
            f"MCP server {self.name!r} is not available ({down.reason}); tool {tool!r} was not"
            f" run; LAM is {self._transport.recovery} it in the background ({when})"
        )

    def _lost_error(self, tool: str, reason: str, idempotent: bool) -> ActionFailed:
        if self._stopping:
            return ActionFailed(
                f"MCP connector {self.name!r} was closed while tool {tool!r} ran;"
                " whether it did its work is unknown"
            )
        error = RetryableError if idempotent else ActionFailed
        unknown = "" if idempotent else f"; whether tool {tool!r} did its work is unknown"
        return error(
            f"MCP server {self.name!r} {self._transport.ended}: {reason}{unknown};"
            f" LAM is {self._transport.recovery} it"
        )

    def _restart(self, live: _Live, reason: str) -> None:
        if self._live is not live:
            return  # that connection has been replaced already
        self._restart_reason = reason
        self._connection_lost = True
        self._wake.set()

    async def _cancel_on_server(self, live: _Live, request_ids: list[int], waited: float) -> None:
        if not request_ids:
            return
        notice = types.CancelledNotification(
            params=types.CancelledNotificationParams(
                requestId=request_ids[0], reason=f"LAM stopped waiting after {waited:g}s"
            )
        )
        try:
            async with asyncio.timeout(CANCEL_NOTICE_WITHIN):
                await live.session.send_notification(types.ClientNotification(notice))
        except Exception as error:  # the call has failed already; this only tidies up
            log.info("mcp.cancel_not_sent", connector=self.name, error=self._mask(str(error)))

    async def _run(self, first: asyncio.Future[None]) -> None:
        try:
            await self._supervise(first)
        finally:
            # Cancelled by aclose: nothing may be left waiting for an answer.
            live, self._live = self._live, None
            if live is not None and not live.closed.done():
                live.closed.set_result("LAM closed the connector")
            if not first.done():
                _fail(first, "LAM closed the connector while it started")

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            self._phase = "connecting"
            try:
                reason = await self._serve(first)
            except Exception as error:  # whatever ended the connection, it is reported
                reason = self._why(root_cause(error))
            reason = self._mask(reason)
            live, self._live = self._live, None
            if live is not None and not live.closed.done():
                live.closed.set_result(reason)
            if not first.done():
                _fail(first, reason)
                return
            if self._stopping:
                return
            if live is not None and loop.time() - live.opened_at >= self._backoff.maximum:
                failures = 0
            failures += 1
            delay = self._backoff.delay(failures)
            self._down = _Down(reason, loop.time() + delay)
            self._phase = "waiting"
            log.warning(
                "mcp.server_down",
                connector=self.name,
                reason=reason,
                failures=failures,
                restart_in=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)
            if self._stopping:
                return
            self._down = _Down(reason, None)

    def _why(self, cause: BaseException) -> str:
        if isinstance(cause, McpError):
            if cause.error.code == types.CONNECTION_CLOSED:
                return self._transport.why_ended()
            return f"it answered: {cause.error.message}"
        if isinstance(cause, anyio.BrokenResourceError | anyio.ClosedResourceError):
            # Writing to a server that already ended, before its reader saw the end.
            return self._transport.why_ended()
        if isinstance(cause, TimeoutError):
            return f"it did not answer within {self._connect_timeout:g}s"
        if isinstance(cause, LamError):
            return str(cause)
        return describe_failure(cause)

    async def _serve(self, first: asyncio.Future[None]) -> str:
        """One connection, from connecting to its end; returns why it ended."""
        self._connection_lost = self._relist = False
        self._restart_reason = None
        self._wake.clear()
        async with AsyncExitStack() as stack:
            read, write = await self._transport.open(stack)
            to_session, session_reads = anyio.create_memory_object_stream[
                SessionMessage | Exception
            ](0)
            pump = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(pump.cancel_scope.cancel)
            pump.start_soon(self._pump, read, to_session)
            session = await stack.enter_async_context(
                ClientSession(session_reads, write, message_handler=self._on_message)
            )
            with anyio.fail_after(self._connect_timeout):
                await session.initialize()
                tools = await list_tools(session)
            self._tools_seen(tools, not first.done())
            loop = asyncio.get_running_loop()
            self._live = _Live(session, loop.create_future(), loop.time())
            if not first.done():
                first.set_result(None)
            else:
                log.info("mcp.server_back", connector=self.name, after=self._down.reason)
            self._phase = "connected"
            ended = await self._watch(session)
        if ended == "stopped":
            return "LAM closed the connector"
        return self._restart_reason or self._transport.why_ended()

    async def _watch(self, session: ClientSession) -> Literal["lost", "stopped"]:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return "stopped"
            if self._connection_lost:
                return "lost"
            if self._relist:
                self._relist = False
                with anyio.fail_after(self._connect_timeout):
                    tools = await list_tools(session)
                self._tools_seen(tools, False)

    async def _pump(
        self,
        read: MemoryObjectReceiveStream[SessionMessage | Exception],
        to_session: MemoryObjectSendStream[SessionMessage | Exception],
    ) -> None:
        """Pass the server's messages on to the session; their end is the connection's end."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            async with read, to_session:
                async for message in read:
                    await to_session.send(message)
        self._connection_lost = True
        self._wake.set()

    async def _on_message(
        self,
        message: RequestResponder[types.ServerRequest, types.ClientResult]
        | types.ServerNotification
        | Exception,
    ) -> None:
        # Runs in the session's receive loop: a request from here would wait for itself,
        # so the listing is left to the supervising task.
        if isinstance(message, types.ServerNotification) and isinstance(
            message.root, types.ToolListChangedNotification
        ):
            self._relist = True
            self._wake.set()
        elif isinstance(message, Exception):
            # E.g. the answer to a call LAM already gave up on and cancelled.
            log.info("mcp.unexpected_message", connector=self.name, error=self._mask(str(message)))


async def list_tools(session: ClientSession) -> list[types.Tool]:
    """Every tool, following the server's pagination."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        params = None if cursor is None else types.PaginatedRequestParams(cursor=cursor)
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        if not page.nextCursor:
            return tools
        cursor = page.nextCursor
    raise ValueError(f"the server's tool list did not end after {MAX_TOOL_PAGES} pages")


def _fail(first: asyncio.Future[None], reason: str) -> None:
    first.set_exception(StartFailed(reason))
    # Marked as seen: if start() gave up waiting, nobody else will look at it.
    first.exception()


async def _discard(task: asyncio.Task[types.CallToolResult]) -> None:
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not report it as never retrieved


async def _reason(live: _Live) -> str:
    """Why the connection ended, once the supervisor has cleaned it up and knows."""
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            return await asyncio.shield(live.closed)
    except TimeoutError:
        return "the connection closed"
