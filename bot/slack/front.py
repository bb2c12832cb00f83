"""The Slack front's shared parts: the engine, the Web API client, what it remembers.

Listeners ack and hand their work to functions that take a ``SlackFront``; those
functions only render and collect input and call the engine, which decides everything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import structlog
from slack_sdk.errors import SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.engine import Engine
from bot.models import RequestRecord
from bot.slack._state import SlackState
from bot.slack._tasks import Background
from bot.slack.blocks import Block, code
from bot.slack.identity import Directory, Identity, slack_user
from bot.slack.options import SlackOptions

log = structlog.get_logger("lam.slack")

SLACK_FAILURES: tuple[type[BaseException], ...] = (
    SlackClientError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
)
"""What a Web API call raises when Slack refuses it or cannot be reached."""


class Tracker(Protocol):
    """Keeps plan messages in step with their requests (``bot.slack.progress``)."""

    def touch(self, request_id: str) -> None: ...


class _NoTracker:
    def touch(self, request_id: str) -> None:
        pass


@dataclass(frozen=True)
class Where:
    """Where a person acted, so an answer only they see can go back there."""

    user_id: str
    channel: str | None = None
    thread_ts: str | None = None
    response_url: str | None = None


@dataclass
class SlackFront:
    engine: Engine
    client: AsyncWebClient
    """The bot's Web API client, on the one shared aiohttp session."""
    session: aiohttp.ClientSession
    options: SlackOptions
    state: SlackState
    directory: Directory
    background: Background = field(default_factory=Background)
    tracker: Tracker = field(default_factory=_NoTracker)
    bot_user_id: str = ""
    team_id: str = ""

    async def tell(self, where: Where, text: str, blocks: list[Block] | None = None) -> None:
        """Answer one person: ephemeral where they acted, else in their DM with LAM."""
        if where.response_url and self.trusted_response_url(where.response_url):
            try:
                webhook = AsyncWebhookClient(where.response_url, session=self.session)
                answer = await webhook.send(
                    text=text, blocks=blocks, response_type="ephemeral", replace_original=False
                )
                if answer.status_code == 200:
                    return
            except SLACK_FAILURES as error:
                log.info("slack.response_url_failed", error=str(error))
        try:
            if where.channel is not None:
                await self.client.chat_postEphemeral(
                    channel=where.channel,
                    user=where.user_id,
                    text=text,
                    blocks=blocks,
                    thread_ts=where.thread_ts,
                )
                return
        except SLACK_FAILURES as error:
            log.info("slack.ephemeral_failed", error=str(error))
        try:
            await self.client.chat_postMessage(channel=where.user_id, text=text, blocks=blocks)
        except SLACK_FAILURES as error:
            log.warning("slack.tell_failed", user=where.user_id, error=str(error))

    def trusted_response_url(self, url: str) -> bool:
        """Only Slack's own hosts (or the configured Web API host) get posted to."""
        parts, api = urlsplit(url), urlsplit(self.options.api_url)
        if parts.scheme == "https" and parts.hostname == "hooks.slack.com":
            return True
        return (parts.scheme, parts.netloc) == (api.scheme, api.netloc)

    def environment_of(self, channel: str | None) -> str | None:
        """The environment a channel is bound to (``LAM_CHANNEL_ENVIRONMENTS``), if any."""
        return self.options.channel_environments.get(channel) if channel else None

    async def groups_of(self, identity: Identity) -> tuple[str, ...]:
        """The ``group:HANDLE`` subjects of the person's Slack user groups."""
        return await self.directory.groups_of(identity.user_id)

    async def labels(self, record: RequestRecord) -> dict[str, str]:
        """How each approver subject of ``record`` appears in Slack: a mention where one exists."""
        labels: dict[str, str] = {}
        for subject in {a for d in record.decisions for a in d.approvers}:
            handle = self.group_handle(subject)
            group = await self.directory.group(handle) if handle else None
            if group is not None:
                labels[subject] = f"<!subteam^{group.id}> ({code(subject)})"
            elif user := slack_user(subject):
                labels[subject] = f"<@{user}>"
        return labels

    def group_handle(self, subject: str) -> str | None:
        """The Slack user group behind an approver subject: ``group:HANDLE`` or configured."""
        if subject in self.options.approver_groups:
            return self.options.approver_groups[subject]
        if subject.startswith("group:"):
            return subject.removeprefix("group:")
        return None

    async def approver_users(self, record: RequestRecord) -> list[str]:
        """Slack users who may approve every step of ``record`` that needs approval."""
        candidates: set[str] = set()
        for subject in {a for d in record.decisions for a in d.approvers}:
            if user := slack_user(subject):
                candidates.add(user)
            handle = self.group_handle(subject)
            group = await self.directory.group(handle) if handle else None
            if group is not None:
                candidates |= group.members
        requester = slack_user(record.request.requester)
        team = record.request.requester.removeprefix("user:").partition("/")[0]
        return sorted(
            [
                user
                for user in candidates
                if user != requester
                and self.may_approve(
                    f"user:{team}/{user}", record, await self.directory.groups_of(user)
                )
            ]
        )

    def may_approve(
        self, subject: str, record: RequestRecord, groups: tuple[str, ...] = ()
    ) -> bool:
        """Whether policy lets ``subject`` approve every step of ``record`` that needs it."""
        if record.plan is None:
            return False
        steps = {s.id: s for s in record.plan.steps}
        policy = self.engine.policy
        return all(
            policy.may_approve(subject, steps[d.step_id], groups=groups)[0]
            for d in record.decisions
            if d.decision == "needs_approval" and d.step_id in steps
        )
