"""How Slack's deliveries reach the bolt app: HTTP behind LAM's guard, or Socket Mode.

HTTP: ``POST /slack/events`` (events, commands, interactions), checked by LAM's guard
(``bot.slack._guard``) before bolt, next to the health endpoints. Socket Mode needs no
inbound port; the health endpoints are served on their own port. Used in whichever
process takes Slack's deliveries: ``lam serve`` itself, or its ingress process
(``bot.slack.ingress``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import structlog
from aiohttp import web
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import ConfigError
from bot.health import OK, listening
from bot.slack._guard import MAX_BODY, RequestGuard
from bot.slack.app import dispatch

log = structlog.get_logger("lam.slack")

EVENTS_PATH = "/slack/events"


def _bolt_to_aiohttp(response: BoltResponse) -> web.Response:
    content_type = response.headers.get("content-type", ["text/plain"])[0].split(";")[0]
    return web.Response(status=response.status, body=response.body, content_type=content_type)


@dataclass
class SocketConnection:
    """The Socket Mode connection, while there is one; readiness asks whether it is up."""

    client: SocketModeClient | None = None

    async def check(self) -> str:
        if self.client is not None and await self.client.is_connected():
            return OK
        return "not connected"


def events_route(app: AsyncApp, guard: RequestGuard) -> web.RouteDef:
    """``POST /slack/events``: LAM's guard, then bolt."""

    async def events(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "the request body is too large"}, status=413)
        verdict = guard.check(request.headers, body)
        if not verdict.accepted:
            if verdict.status != 200:
                log.info("slack.refused", status=verdict.status, reason=verdict.reason)
            else:
                log.info("slack.replay_ignored")
            if verdict.status == 200:
                return web.Response(status=200, text="")
            return web.json_response({"error": verdict.reason}, status=verdict.status)
        response = await dispatch(app, verdict.payload, request.headers)
        return _bolt_to_aiohttp(response)

    return web.post(EVENTS_PATH, events)


@contextlib.asynccontextmanager
async def socket_mode(
    app: AsyncApp, client: AsyncWebClient, app_token: str, connection: SocketConnection
) -> AsyncIterator[SocketModeClient]:
    """Connect to Slack over Socket Mode; every envelope is acked, whatever bolt answers.

    Bolt sends no ack for a non-200 answer, and Slack then delivers the envelope again
    and again; a payload LAM refuses is acked (empty) so that it is not.
    """

    async def handle(socket_client: SocketModeClient, request: SocketModeRequest) -> None:
        headers = {}
        if request.retry_attempt is not None:
            headers["X-Slack-Retry-Num"] = str(request.retry_attempt)
        response = await dispatch(app, request.payload, headers)
        payload = None
        if response.status == 200 and response.body:
            try:
                parsed = json.loads(response.body)
                payload = parsed if isinstance(parsed, dict) else {"text": response.body}
            except ValueError:
                payload = {"text": response.body}
        elif response.status != 200:
            log.info("slack.envelope_refused", status=response.status, body=response.body[:200])
        await socket_client.send_socket_mode_response(
            SocketModeResponse(envelope_id=request.envelope_id, payload=payload)
        )

    try:
        # The client retries a refused connection for ever; a refused token is a mistake
        # to name at start-up instead.
        await client.apps_connections_open(app_token=app_token)
    except SlackApiError as error:
        raise ConfigError(
            f"SLACK_APP_TOKEN was refused by Slack ({error.response.get('error')}); copy the"
            " app-level token (connections:write) again from Basic Information"
        ) from None
    socket_client = SocketModeClient(app_token=app_token, web_client=client)
    socket_client.socket_mode_request_listeners.append(handle)  # type: ignore[arg-type]  # slack_sdk types listeners as sync callables or async ones loosely
    await socket_client.connect()  # type: ignore[no-untyped-call]  # slack_sdk leaves it unannotated
    connection.client = socket_client
    try:
        yield socket_client
    finally:
        connection.client = None
        await socket_client.close()  # type: ignore[no-untyped-call]  # slack_sdk leaves it unannotated


@dataclass(frozen=True)
class Listen:
    """How and where the front takes Slack's deliveries and answers health checks."""

    signing_secret: str | None
    """Over HTTP: what Slack signs its requests with."""
    app_token: str | None
    """Set: Socket Mode, with this app-level token."""
    host: str
    port: int
    health_port: int | None = None
    """Socket Mode only: the health endpoints' port (default: ``port``)."""


@contextlib.asynccontextmanager
async def accepting(
    app: AsyncApp,
    client: AsyncWebClient,
    listen: Listen,
    health: Sequence[web.RouteDef],
    connection: SocketConnection,
) -> AsyncIterator[str]:
    """Take Slack's deliveries into ``app``: over HTTP on ``listen.port`` next to the
    ``health`` routes, or over Socket Mode with the health routes on ``listen.health_port``.

    Yields the base URL of the HTTP server. Leaving the block stops Slack's deliveries
    first: the Socket Mode connection closes, or the HTTP server stops accepting.
    """
    application = web.Application(client_max_size=MAX_BODY)
    application.add_routes(health)
    if listen.app_token is not None:
        port = listen.port if listen.health_port is None else listen.health_port
        # Health answers first, so an orchestrator can watch the connection come up.
        async with (
            listening(application, listen.host, port) as url,
            socket_mode(app, client, listen.app_token, connection),
        ):
            yield url
        return
    assert listen.signing_secret is not None  # slack_options requires one of them
    application.add_routes([events_route(app, RequestGuard(listen.signing_secret))])
    async with listening(application, listen.host, listen.port) as url:
        yield url
