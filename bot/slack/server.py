"""``lam serve``: the Slack front over HTTP or Socket Mode, with health endpoints.

HTTP: ``POST /slack/events`` (events, commands, interactions), checked by LAM's guard
before bolt, and the endpoints of ``bot.health`` (``/healthz``, ``/readyz``,
``/metrics``). Socket Mode (``SLACK_APP_TOKEN`` set) needs no inbound port; the health
endpoints are served on ``--health-port`` (default: ``--port``). Every Web API call
goes through one aiohttp session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from slack_bolt.response import BoltResponse
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot.audit import Redactor
from bot.config import Settings
from bot.health import Check, Health, health_application, health_routes, listening
from bot.runtime import Shutdown, run_background, worker_names
from bot.slack._guard import MAX_BODY, RequestGuard
from bot.slack.app import dispatch
from bot.slack.options import SlackOptions, load_slack_settings, slack_options
from bot.slack.service import SlackService, open_service
from bot.wiring import open_engine

log = structlog.get_logger("lam.slack")

EVENTS_PATH = "/slack/events"


def _bolt_to_aiohttp(response: BoltResponse) -> web.Response:
    content_type = response.headers.get("content-type", ["text/plain"])[0].split(";")[0]
    return web.Response(status=response.status, body=response.body, content_type=content_type)


def slack_health(service: SlackService, stopping: asyncio.Event | None = None) -> Health:
    """The health endpoints' view of the front: its engine, and in Socket Mode the connection."""
    checks: dict[str, Check] = {}
    if service.front.options.socket_mode:

        async def connected() -> str:
            socket_client = service.socket
            if socket_client is not None and await socket_client.is_connected():
                return "ok"
            return "not connected"

        checks["slack"] = connected
    return Health(service.front.engine, stopping=stopping, checks=checks)


def http_application(
    service: SlackService, guard: RequestGuard, health: Health | None = None
) -> web.Application:
    """``/slack/events`` behind LAM's guard, and the health endpoints."""

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
        response = await dispatch(service.app, verdict.payload, request.headers)
        return _bolt_to_aiohttp(response)

    application = web.Application(client_max_size=MAX_BODY)
    application.add_routes(
        [web.post(EVENTS_PATH, events), *health_routes(health or slack_health(service))]
    )
    return application


@contextlib.asynccontextmanager
async def socket_mode(service: SlackService, app_token: str) -> AsyncIterator[SocketModeClient]:
    """Connect to Slack over Socket Mode; every envelope is acked, whatever bolt answers.

    Bolt sends no ack for a non-200 answer, and Slack then delivers the envelope again
    and again; a payload LAM refuses is acked (empty) so that it is not.
    """
    client = SocketModeClient(app_token=app_token, web_client=service.front.client)

    async def handle(socket_client: SocketModeClient, request: SocketModeRequest) -> None:
        headers = {}
        if request.retry_attempt is not None:
            headers["X-Slack-Retry-Num"] = str(request.retry_attempt)
        response = await dispatch(service.app, request.payload, headers)
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

    client.socket_mode_request_listeners.append(handle)  # type: ignore[arg-type]  # slack_sdk types listeners as sync callables or async ones loosely
    await client.connect()  # type: ignore[no-untyped-call]  # slack_sdk leaves it unannotated
    service.socket = client
    try:
        yield client
    finally:
        service.socket = None
        await client.close()  # type: ignore[no-untyped-call]  # slack_sdk leaves it unannotated


@contextlib.asynccontextmanager
async def running(
    service: SlackService,
    options: SlackOptions,
    *,
    host: str,
    port: int,
    health_port: int | None,
    health: Health | None = None,
) -> AsyncIterator[str]:
    """The front listening: HTTP on ``port``, or Socket Mode with health on ``health_port``.

    Yields the base URL of the HTTP server (events and health, or health alone). Leaving
    the block stops Slack's deliveries first: the Socket Mode connection closes, or the
    HTTP server stops accepting connections.
    """
    health = health or slack_health(service)
    if options.app_token is not None:
        port = port if health_port is None else health_port
        # Health answers first, so an orchestrator can watch the connection come up.
        async with (
            listening(health_application(health), host, port) as url,
            socket_mode(service, options.app_token),
        ):
            yield url
        return
    assert options.signing_secret is not None  # slack_options requires it without an app token
    guard = RequestGuard(options.signing_secret)
    async with listening(http_application(service, guard, health), host, port) as url:
        yield url


async def serve(
    settings: Settings,
    *,
    port: int = 3000,
    health_port: int | None = None,
    host: str = "0.0.0.0",  # noqa: S104 -- a server listens on every interface by default
    redactor: Redactor | None = None,
) -> None:
    """Run the Slack front until SIGTERM or Ctrl-C; ``lam serve`` calls this.

    Raises ``ConfigError`` (naming the setting) before anything starts when a token is
    missing or refused. Stopping (see ``bot.runtime``): Slack's deliveries stop first;
    then the work in progress (in-process workers, and what listeners handed off) has
    the grace period to finish; then the audit channel is brought up to date; then the
    store closes.
    """
    options = slack_options(settings, load_slack_settings())
    shutdown = Shutdown(settings.lam_shutdown_grace_seconds)
    engine = await open_engine(settings, redactor)
    try:
        with shutdown.on_signals():
            async with aiohttp.ClientSession() as session:
                async with open_service(engine, options, session) as service:
                    await _serve_until_stopped(service, settings, shutdown, host, port, health_port)
                if service.poster is not None:
                    # The poster's own loop has stopped: what it had not posted yet goes
                    # out now, once and in order. Cut short, it is posted by the next
                    # replica, from the position the poster saved.
                    await shutdown.within(service.poster.drain(), name="audit posting")
    finally:
        await engine.aclose()
    log.warning("shutdown.finished")


async def _serve_until_stopped(
    service: SlackService,
    settings: Settings,
    shutdown: Shutdown,
    host: str,
    port: int,
    health_port: int | None,
) -> None:
    """Serve Slack until ``shutdown.stop``, then let the work in progress finish."""
    engine = service.front.engine
    # Policy reloads, and with Redis the in-process workers (LAM_SERVE_WORKERS).
    background = asyncio.create_task(
        run_background(
            engine,
            settings,
            shutdown,
            workers=worker_names(None, settings.lam_serve_workers)
            if settings.lam_serve_workers
            else [],
        ),
        name="background",
    )
    try:
        options = service.front.options
        health = slack_health(service, shutdown.stop)
        async with running(
            service, options, host=host, port=port, health_port=health_port, health=health
        ) as url:
            log.warning("slack.serving", mode="socket" if options.socket_mode else "http", url=url)
            await shutdown.stop.wait()
        log.info("slack.stopped_listening")
        if not await shutdown.within(service.idle(), name="slack work"):
            await service.front.background.aclose(grace=0)
    except BaseException:
        shutdown.abort("the Slack front stopped without a signal")
        raise
    finally:
        await background
