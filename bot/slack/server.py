"""``lam serve``: the Slack front over HTTP or Socket Mode, with health endpoints.

HTTP: ``POST /slack/events`` (events, commands, interactions), checked by LAM's guard
before bolt; ``GET /healthz`` (the process answers) and ``GET /readyz`` (the store
answers, a policy is loaded). Socket Mode (``SLACK_APP_TOKEN`` set) needs no inbound
port; the health endpoints are served on ``--health-port`` (default: ``--port``).
Every Web API call goes through one aiohttp session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
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
from bot.policy import Policy
from bot.runtime import run_background, worker_names
from bot.slack._guard import MAX_BODY, RequestGuard
from bot.slack.app import dispatch
from bot.slack.options import SlackOptions, load_slack_settings, slack_options
from bot.slack.service import SlackService, open_service
from bot.wiring import open_engine

log = structlog.get_logger("lam.slack")

EVENTS_PATH = "/slack/events"
READY_TIMEOUT = 2.0


def _bolt_to_aiohttp(response: BoltResponse) -> web.Response:
    content_type = response.headers.get("content-type", ["text/plain"])[0].split(";")[0]
    return web.Response(status=response.status, body=response.body, content_type=content_type)


def health_routes(service: SlackService) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = await readiness(service)
        ready = all(value == "ok" for value in checks.values())
        return web.json_response(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status=200 if ready else 503,
        )

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


async def readiness(service: SlackService) -> dict[str, str]:
    """Each readiness check's outcome: ``ok`` or what is wrong."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await service.front.engine.store.audit_head()
        checks["store"] = "ok"
    except Exception as error:  # Whatever the store raises, it is not ready.
        checks["store"] = f"unreachable: {type(error).__name__}"
    policy = service.front.engine.policy
    checks["policy"] = "ok" if isinstance(policy, Policy) else "not loaded"
    if service.socket is not None:
        connected = await service.socket.is_connected()
        checks["slack"] = "ok" if connected else "not connected"
    return checks


def http_application(service: SlackService, guard: RequestGuard) -> web.Application:
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
    application.add_routes([web.post(EVENTS_PATH, events), *health_routes(service)])
    return application


@contextlib.asynccontextmanager
async def listening(application: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``application``; yields ``http://HOST:PORT`` (a free port when ``port`` is 0)."""
    runner = web.AppRunner(application, shutdown_timeout=5.0, access_log=None)
    await runner.setup()
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        bound = listener.getsockname()[1]
        await web.SockSite(runner, listener).start()
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 -- display only
        yield f"http://{shown}:{bound}"
    finally:
        await runner.cleanup()
        listener.close()


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
    service: SlackService, options: SlackOptions, *, host: str, port: int, health_port: int | None
) -> AsyncIterator[str]:
    """The front listening: HTTP on ``port``, or Socket Mode with health on ``health_port``.

    Yields the base URL of the HTTP server (events and health, or health alone).
    """
    if options.app_token is not None:
        application = web.Application()
        application.add_routes(health_routes(service))
        health = port if health_port is None else health_port
        # Health answers first, so an orchestrator can watch the connection come up.
        async with (
            listening(application, host, health) as url,
            socket_mode(service, options.app_token),
        ):
            yield url
        return
    assert options.signing_secret is not None  # slack_options requires it without an app token
    guard = RequestGuard(options.signing_secret)
    async with listening(http_application(service, guard), host, port) as url:
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
    missing or refused.
    """
    options = slack_options(settings, load_slack_settings())
    engine = await open_engine(settings, redactor)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with (
            aiohttp.ClientSession() as session,
            open_service(engine, options, session) as service,
        ):
            # Policy reloads, and with Redis the in-process workers (LAM_SERVE_WORKERS).
            reloading = asyncio.create_task(
                run_background(
                    engine,
                    settings,
                    stop,
                    workers=worker_names(None, settings.lam_serve_workers)
                    if settings.lam_serve_workers
                    else [],
                ),
                name="background",
            )
            mode = "socket" if options.socket_mode else "http"
            async with running(
                service, options, host=host, port=port, health_port=health_port
            ) as url:
                log.warning("slack.serving", mode=mode, url=url)
                await stop.wait()
            await reloading
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await engine.aclose()
