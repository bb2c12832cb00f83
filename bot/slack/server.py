"""``lam serve``: the Slack front over HTTP or Socket Mode, with health endpoints.

HTTP: ``POST /slack/events`` (events, commands, interactions) and the endpoints of
``bot.health`` (``/healthz``, ``/readyz``, ``/metrics``) on ``--port``. Socket Mode
(``SLACK_APP_TOKEN`` set) needs no inbound port; the health endpoints are served on
``--health-port`` (default: ``--port``). Deliveries are taken by the ingress process
(``bot.slack.ingress``) or, with ``LAM_SLACK_INGRESS=inline``, by this one
(``bot.slack.transport``); their work is done here. Every Web API call goes through
one aiohttp session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import aiohttp
import structlog

from bot.audit import Redactor
from bot.config import Settings
from bot.errors import LamError
from bot.health import Health, health_routes
from bot.runtime import Shutdown, run_background, worker_names
from bot.slack.ingress import IngressConfig, ingress_process
from bot.slack.options import SlackOptions, load_slack_settings, slack_options
from bot.slack.service import SlackService, open_service
from bot.slack.transport import Listen, SocketConnection, accepting
from bot.wiring import open_engine

log = structlog.get_logger("lam.slack")


@contextlib.asynccontextmanager
async def running(
    service: SlackService,
    options: SlackOptions,
    *,
    host: str,
    port: int,
    health_port: int | None,
    health: Health | None = None,
    ingress_lost: Callable[[str], None] | None = None,
) -> AsyncIterator[str]:
    """The front taking deliveries, in this process or in the ingress process
    (``options.ingress_process``); yields the base URL of the HTTP server (events and
    health, or health alone in Socket Mode).

    ``ingress_lost`` is called when the ingress process ends on its own.
    """
    health = health or Health(service.front.engine)
    listen = Listen(options.signing_secret, options.app_token, host, port, health_port)
    if options.ingress_process:
        config = IngressConfig(
            listen=listen,
            bot=service.bot,
            bot_token=options.bot_token,
            api_url=options.api_url,
            log_format=options.log_format,
            log_level=options.log_level,
        )
        async with ingress_process(
            service.front, health, config, lost=ingress_lost, work_nice=options.work_nice
        ) as ingress:
            service.ingress = ingress
            try:
                yield ingress.url
            finally:
                service.ingress = None
        return
    connection = SocketConnection()
    if options.socket_mode:
        health = replace(health, checks={**health.checks, "slack": connection.check})
    async with accepting(
        service.app, service.front.client, listen, health_routes(health), connection
    ) as url:
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
    store closes. When the ingress process ends on its own, the same stop follows, and
    then ``LamError`` says so (``lam serve`` exits 1).
    """
    options = slack_options(settings, load_slack_settings())
    shutdown = Shutdown(settings.lam_shutdown_grace_seconds)
    engine = await open_engine(settings, redactor)
    try:
        with shutdown.on_signals():
            async with aiohttp.ClientSession() as session:
                async with open_service(engine, options, session) as service:
                    unbidden = await _serve_until_stopped(
                        service, settings, shutdown, host, port, health_port
                    )
                if service.poster is not None:
                    # The poster's own loop has stopped: what it had not posted yet goes
                    # out now, once and in order. Cut short, it is posted by the next
                    # replica, from the position the poster saved.
                    await shutdown.within(service.poster.drain(), name="audit posting")
    finally:
        await engine.aclose()
    log.warning("shutdown.finished")
    if unbidden is not None:
        raise LamError(unbidden)


async def _serve_until_stopped(
    service: SlackService,
    settings: Settings,
    shutdown: Shutdown,
    host: str,
    port: int,
    health_port: int | None,
) -> str | None:
    """Serve Slack until ``shutdown.stop``, then let the work in progress finish.

    Returns why it stopped when nobody asked it to (the ingress process ended).
    """
    unbidden: list[str] = []

    def ingress_lost(why: str) -> None:
        unbidden.append(why)
        shutdown.begin(why)

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
        health = Health(engine, stopping=shutdown.stop)
        async with running(
            service,
            options,
            host=host,
            port=port,
            health_port=health_port,
            health=health,
            ingress_lost=ingress_lost,
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
    return unbidden[0] if unbidden else None
