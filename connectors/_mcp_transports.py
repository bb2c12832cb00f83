"""How the mcp connector reaches a server: a subprocess over stdio, or streamable HTTP.

Both use the SDK's own transports. A transport opens its streams into an exit stack owned
by the supervising task (anyio task groups must close in the task that opened them) and
says, once that stack has closed, how the connection ended.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Protocol

import httpx
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

log = structlog.get_logger("lam.mcp")

STDERR_LINES = 5
"""Lines of a server's stderr kept to explain why it exited."""
STDERR_LINE_CHARS = 500
STDERR_DRAIN = 0.5
"""Seconds to finish reading stderr after the server exited (a child may hold it open)."""
HTTP_TIMEOUT = httpx.Timeout(30.0, read=300.0)
"""The SDK's recommendation: server-sent events may be quiet for minutes."""

Streams = tuple[
    MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]
]
Mask = Callable[[str], str]


class Transport(Protocol):
    ended: str
    """How a lost connection is said: the server ``exited`` or ``disconnected``."""
    recovery: str
    """What LAM does about it: ``restarting`` or ``reconnecting to`` the server."""

    async def open(self, stack: AsyncExitStack) -> Streams:
        """Connect; everything opened is closed by ``stack``."""
        ...

    def why_ended(self) -> str:
        """What is known about why the last connection ended, once its stack closed."""
        ...


class StdioTransport:
    """A server run as a subprocess; its stderr is read, masked, and kept for failures."""

    ended = "exited"
    recovery = "restarting"

    def __init__(
        self,
        command: list[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        connector: str,
        mask: Mask,
    ) -> None:
        # The SDK adds only PATH, HOME, USER, LOGNAME, SHELL and TERM from LAM's own
        # environment: the server never sees LAM's credentials unless `env` passes them.
        self._params = StdioServerParameters(
            command=command[0], args=command[1:], env=dict(env), cwd=cwd
        )
        self._connector = connector
        self._mask = mask
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)

    async def open(self, stack: AsyncExitStack) -> Streams:
        self._stderr.clear()
        read_fd, write_fd = os.pipe()
        reader = asyncio.create_task(self._read_stderr(read_fd))
        # Registered first, so it runs last: after the SDK has reaped the process, when
        # stderr holds the server's last words.
        stack.push_async_callback(self._finish_stderr, reader)
        with os.fdopen(write_fd, "w") as errlog:
            try:
                streams: Streams = await stack.enter_async_context(
                    stdio_client(self._params, errlog=errlog)
                )
            except OSError as error:
                raise ServerUnavailable(
                    f"cannot run {self._params.command!r}: {error.strerror or error}"
                ) from None
        return streams

    def why_ended(self) -> str:
        said = " | ".join(self._stderr)
        return f"its process ended; its stderr ended with: {said}" if said else "its process ended"

    async def _read_stderr(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe
            )
            try:
                pending = b""
                while chunk := await reader.read(65536):
                    *lines, pending = (pending + chunk).split(b"\n")
                    pending = pending[-STDERR_LINE_CHARS * 4 :]
                    for line in lines:
                        self._line(line)
                if pending:
                    self._line(pending)
            finally:
                transport.close()

    def _line(self, raw: bytes) -> None:
        line = self._mask(raw.decode("utf-8", errors="replace").rstrip()[:STDERR_LINE_CHARS])
        if line:
            self._stderr.append(line)
            log.debug("mcp.stderr", connector=self._connector, line=line)

    async def _finish_stderr(self, reader: asyncio.Task[None]) -> None:
        done, _ = await asyncio.wait({reader}, timeout=STDERR_DRAIN)
        if not done:
            reader.cancel()
            await asyncio.wait({reader})
        if not reader.cancelled() and (error := reader.exception()) is not None:
            log.warning("mcp.stderr_unreadable", connector=self._connector, error=str(error))


class HttpTransport:
    """A server reached over streamable HTTP, with the configured headers on every request."""

    ended = "disconnected"
    recovery = "reconnecting to"

    def __init__(self, url: str, *, headers: Mapping[str, str]) -> None:
        self._url = url
        self._headers = dict(headers)

    async def open(self, stack: AsyncExitStack) -> Streams:
        client = await stack.enter_async_context(
            httpx.AsyncClient(headers=self._headers, timeout=HTTP_TIMEOUT)
        )
        read, write, _ = await stack.enter_async_context(
            streamable_http_client(self._url, http_client=client)
        )
        return read, write

    def why_ended(self) -> str:
        return "the connection closed"


class ServerUnavailable(Exception):
    """The server could not be started or reached; the message says why."""


def root_cause(error: BaseException) -> BaseException:
    """The first real failure inside the exception groups anyio task groups raise."""
    if isinstance(error, BaseExceptionGroup):
        causes = [root_cause(inner) for inner in error.exceptions]
        return next((c for c in causes if not isinstance(c, asyncio.CancelledError)), causes[0])
    return error


def describe_failure(error: BaseException) -> str:
    """Why a connection failed, from what the transport raised."""
    if isinstance(error, ServerUnavailable):
        return str(error)
    if isinstance(error, httpx.HTTPStatusError):
        response = error.response
        return f"it answered HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if isinstance(error, httpx.TransportError):
        return f"cannot reach it: {type(error).__name__}: {error}".rstrip(": ")
    return f"{type(error).__name__}: {error}".rstrip(": ")
