"""The local Slack's Socket Mode: the WebSocket, envelopes sent, acks received."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp
from aiohttp import web

from tests.support.slack_model import (
    JSON,
    WAIT_TIMEOUT,
    SocketAck,
    SocketConnection,
)

# The waits take a ``timeout`` instead of leaving it to the caller's ``asyncio.timeout`` so
# that, when it expires, the failure says what was awaited and what arrived instead.
# ruff: noqa: ASYNC109


class SocketMode:
    """The Socket Mode half of ``SlackSimulator``; it keeps its state on the simulator."""

    # -- Socket Mode -------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid or used ticket")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        connection = SocketConnection(len(self.socket_connections) + 1, ticket, ws)
        self.socket_connections.append(connection)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": sum(c.open for c in self.socket_connections),
                "debug_info": {
                    "host": "applink-lam-test",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": self.app_id},
            }
        )
        await self._notify()
        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                self._receive(connection, frame.data)
                await self._notify()
        await self._notify()
        return ws

    def _receive(self, connection: SocketConnection, raw: str) -> None:
        connection.received.append(raw)
        try:
            message = json.loads(raw)
        except ValueError:
            return
        if not isinstance(message, dict) or "envelope_id" not in message:
            return
        payload = message.get("payload")
        ack = SocketAck(
            str(message["envelope_id"]),
            payload if isinstance(payload, dict) else None,
            connection.number,
            raw,
        )
        self.acks.append(ack)
        pending = self._pending_acks.pop(ack.envelope_id, None)
        if pending is not None and not pending.done():
            pending.set_result(ack)

    async def wait_for_socket(
        self, number: int = 1, *, timeout: float = WAIT_TIMEOUT
    ) -> SocketConnection:
        """Socket Mode connection ``number`` (1 for the first), once the client has opened it."""

        def connection() -> SocketConnection | None:
            if len(self.socket_connections) >= number:
                return self.socket_connections[number - 1]
            return None

        return await self._wait(
            connection, timeout, lambda: f"no Socket Mode connection #{number} within {timeout}s"
        )

    def _current_socket(self) -> SocketConnection | None:
        open_connections = [c for c in self.socket_connections if c.open]
        return open_connections[-1] if open_connections else None

    async def socket_send(
        self,
        type: Literal["events_api", "slash_commands", "interactive"],
        payload: Mapping[str, Any],
        *,
        accepts_response_payload: bool | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        timeout: float = WAIT_TIMEOUT,
    ) -> SocketAck:
        """Send an envelope on the newest open connection and return the client's ack.

        Waits for an open connection first. ``accepts_response_payload`` defaults to
        false for ``events_api`` and true otherwise, as Slack sets it.
        """
        connection = await self._wait(
            self._current_socket, timeout, lambda: f"no open Socket Mode connection in {timeout}s"
        )
        envelope: JSON = {
            "envelope_id": str(uuid.uuid4()),
            "payload": dict(payload),
            "type": type,
            "accepts_response_payload": (
                type != "events_api"
                if accepts_response_payload is None
                else accepts_response_payload
            ),
        }
        if type == "events_api":
            envelope |= {"retry_attempt": retry_attempt, "retry_reason": retry_reason}
        acked: asyncio.Future[SocketAck] = asyncio.get_running_loop().create_future()
        self._pending_acks[envelope["envelope_id"]] = acked
        await connection.ws.send_str(json.dumps(envelope))
        try:
            return await asyncio.wait_for(acked, timeout)
        except TimeoutError:
            self._pending_acks.pop(envelope["envelope_id"], None)
            raise TimeoutError(
                f"no ack for {type!r} envelope {envelope['envelope_id']!r} within {timeout}s"
            ) from None

    async def socket_disconnect(
        self, reason: str = "refresh_requested", *, close: bool = False
    ) -> SocketConnection:
        """Send ``disconnect`` on the newest open connection; with ``close``, then close it.

        Slack sends ``warning`` shortly before it closes a connection and
        ``refresh_requested`` when the client should reconnect; a client that behaves opens a
        new connection through ``apps.connections.open`` (see ``wait_for_socket``).
        """
        connection = self._current_socket()
        if connection is None:
            raise RuntimeError("no open Socket Mode connection to disconnect")
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": "wss-lam-test"}}
        await connection.ws.send_json(message)
        if close:
            await connection.ws.close()
        return connection
