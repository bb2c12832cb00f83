"""The running Slack front: its client checked against Slack, its app, its feeds.

``open_service`` is used by ``lam serve`` and by the tests alike; it needs an engine and
one aiohttp session, and stops its loops (after the handed-off work) when it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import structlog
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.engine import Engine
from bot.errors import ConfigError
from bot.models import RequestRecord
from bot.slack._lease import Lease
from bot.slack._state import SlackState, migrate
from bot.slack._tasks import Background
from bot.slack.app import Bot, build_app
from bot.slack.audit_poster import AuditPoster
from bot.slack.front import SLACK_FAILURES, SlackFront
from bot.slack.identity import Directory
from bot.slack.options import SlackOptions
from bot.slack.progress import Progress
from bot.slack.work import receive

if TYPE_CHECKING:
    # The ingress process runs ``bot.slack.ingress`` as ``__main__``: the package it is in
    # must not have imported it already.
    from bot.slack.ingress import Ingress

log = structlog.get_logger("lam.slack")


@dataclass
class SlackService:
    front: SlackFront
    app: AsyncApp
    bot: Bot
    progress: Progress
    poster: AuditPoster | None
    lease: Lease
    """Whether this replica does the follow-up work (progress, the audit channel)."""
    ingress: Ingress | None = None
    """The ingress process taking Slack's deliveries, while there is one."""

    def observe(self, record: RequestRecord) -> None:
        """The engine's change hook: show a stored change now, not at the next poll.

        Called synchronously after each save; it only wakes the feeds, which read the
        audit trail themselves, so it never blocks or fails the engine.
        """
        del record  # The feeds read the trail; the record only says something changed.
        self.progress.wake()
        if self.poster is not None:
            self.poster.wake()

    async def idle(self) -> None:
        """Return once the work of every delivery acknowledged so far has finished."""
        if self.ingress is not None:
            await self.ingress.sync()
        await self.front.background.idle()


def web_client(
    options: SlackOptions, session: aiohttp.ClientSession, *, wait_out_rate_limits: bool = True
) -> AsyncWebClient:
    """The bot's Web API client on the shared session; it retries dropped connections,
    and waits out 429s (``Retry-After``) unless the caller does that itself."""
    handlers: list[AsyncRetryHandler] = [AsyncConnectionErrorRetryHandler()]
    if wait_out_rate_limits:
        handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
    return AsyncWebClient(
        token=options.bot_token, base_url=options.api_url, session=session, retry_handlers=handlers
    )


async def check_slack(client: AsyncWebClient, options: SlackOptions) -> Bot:
    """Who LAM is in Slack, from ``auth.test``; ``ConfigError`` naming what Slack refused."""
    try:
        answer = await client.auth_test()
    except SlackApiError as error:
        raise ConfigError(
            f"SLACK_BOT_TOKEN was refused by Slack ({error.response.get('error')}); copy the"
            " bot token again from OAuth & Permissions"
        ) from None
    except SLACK_FAILURES as error:
        raise ConfigError(
            f"SLACK_API_URL: cannot reach Slack at {options.api_url!r}: {error}"
        ) from None
    team_id, user_id, bot_id = answer.get("team_id"), answer.get("user_id"), answer.get("bot_id")
    if not isinstance(team_id, str) or not isinstance(user_id, str):
        raise ConfigError("SLACK_BOT_TOKEN: auth.test named no team or bot user")
    bot = Bot(team_id=team_id, user_id=user_id, bot_id=bot_id if isinstance(bot_id, str) else None)
    if options.audit_channel is not None:
        try:
            info = await client.conversations_info(channel=options.audit_channel)
        except SlackApiError as error:
            raise ConfigError(
                f"LAM_AUDIT_CHANNEL: {options.audit_channel!r} cannot be used"
                f" ({error.response.get('error')}); invite LAM to it or fix the id"
            ) from None
        channel = info.get("channel")
        if isinstance(channel, dict) and channel.get("is_archived"):
            raise ConfigError(f"LAM_AUDIT_CHANNEL: {options.audit_channel!r} is archived")
    return bot


@contextlib.asynccontextmanager
async def open_service(
    engine: Engine, options: SlackOptions, session: aiohttp.ClientSession
) -> AsyncIterator[SlackService]:
    """Check the token with Slack, build the front and its app, run progress and the poster."""
    client = web_client(options, session)
    bot = await check_slack(client, options)
    state = SlackState(engine.store, bot.team_id)
    if options.legacy_state_path is not None:
        await migrate(options.legacy_state_path, state, options.audit_channel)
    lease = Lease(engine.store, ttl=options.lease_ttl)
    front = SlackFront(
        engine=engine,
        client=client,
        session=session,
        options=options,
        state=state,
        directory=Directory(client, refresh=options.groups_refresh),
        background=Background(options.concurrency),
        bot_user_id=bot.user_id,
        team_id=bot.team_id,
    )
    progress = Progress(
        front, lease, poll_interval=options.poll_interval, update_interval=options.update_interval
    )
    front.tracker = progress
    poster = None
    if options.audit_channel is not None:
        poster = AuditPoster(
            engine.store,
            web_client(options, session, wait_out_rate_limits=False),
            state,
            lease,
            options.audit_channel,
            poll_interval=options.poll_interval,
        )
    app = build_app(client, bot, functools.partial(receive, front))
    service = SlackService(front, app, bot, progress, poster, lease)
    engine.observers.append(service.observe)
    stop = asyncio.Event()
    # A lone replica, or one whose predecessor let go, follows up from the start.
    await lease.renew()
    loops = [
        asyncio.create_task(lease.run(stop), name="slack-lease"),
        asyncio.create_task(progress.run(stop), name="slack-progress"),
    ]
    if poster is not None:
        loops.append(asyncio.create_task(poster.run(stop), name="slack-audit-poster"))
    if options.freeze_startup_objects:
        gc.collect()
        gc.freeze()
    try:
        yield service
    finally:
        engine.observers.remove(service.observe)
        await front.background.aclose()
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
        # Another replica takes over at its next renewal rather than after the ttl.
        await lease.release()
