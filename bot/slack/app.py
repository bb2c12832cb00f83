"""The bolt ``AsyncApp`` of the Slack front, its middleware, and one dispatch for both transports.

Cross-cutting concerns are bolt middleware (one, as bolt builds every middleware's and
listener's arguments anew): the delivery's ids go into the log context. LAM verifies and
parses HTTP deliveries itself (``bot.slack._guard``) and checks every payload's shape
(``bot.slack._payload``), then hands bolt the verified payload; over Socket Mode the
WebSocket authenticates Slack.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack._payload import MalformedPayload, check_payload
from bot.slack.identity import identify
from bot.slack.listeners import HandOff, register

log = structlog.get_logger("lam.slack")

FORWARDED_HEADERS = ("X-Slack-Retry-Num", "X-Slack-Retry-Reason")


class RequestContext(AsyncMiddleware):
    """Bolt middleware: the delivery's ids in every log line after, work handed over included.

    It only reads the payload, so acknowledging stays instant. (A class, not a function:
    bolt calls it directly instead of building its arguments for every delivery.)
    """

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse | None:
        # bolt runs the listeners after the middleware chain has returned, in the same
        # task: a `with` block here would be gone by then. The ids stay bound for the rest
        # of the task (and work it hands off copies them).
        bind_delivery(req.body)
        return await next()


LOG_KEYS = ("slack_type", "slack_event_id", "slack_event", "slack_channel", "slack_user")


def bind_delivery(body: Mapping[str, Any]) -> None:
    """Bind a delivery's ids (type, event, channel, user) to the log context, dropping
    those of a delivery handled before in the same context."""
    event = body.get("event")
    identity = identify(body)
    ids = {
        "slack_type": body.get("type") or ("command" if "command" in body else None),
        "slack_event_id": body.get("event_id"),
        "slack_event": event.get("type") if isinstance(event, Mapping) else None,
        "slack_channel": channel_of(body),
        "slack_user": identity.subject if identity else None,
    }
    structlog.contextvars.unbind_contextvars(*LOG_KEYS)
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v})


def channel_of(body: Mapping[str, Any]) -> str | None:
    """The channel of an event, a slash command, or an interaction, for log lines."""
    event = body.get("event")
    container = body.get("container")
    for candidate in (
        event.get("channel") if isinstance(event, Mapping) else None,
        body.get("channel_id"),
        body.get("channel"),
        container.get("channel_id") if isinstance(container, Mapping) else None,
    ):
        if isinstance(candidate, Mapping):
            candidate = candidate.get("id")
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


class Bot(BaseModel):
    """Who LAM is in its workspace, as ``auth.test`` said at start-up."""

    model_config = ConfigDict(frozen=True)

    team_id: str
    user_id: str
    bot_id: str | None = None


def build_app(client: AsyncWebClient, bot: Bot, hand_off: HandOff) -> AsyncApp:
    """The bolt app: LAM's middleware, then its listeners, handing payloads to ``hand_off``.

    ``client`` is only bolt's: LAM's listeners make no Web API call. Nor does bolt: it is
    told who the bot is, rather than asking ``auth.test`` at the first delivery, so an
    ack never waits for (or fails with) Slack's Web API.
    """

    async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=team_id or bot.team_id,
            bot_user_id=bot.user_id,
            bot_id=bot.bot_id,
            bot_token=client.token,
        )

    app = AsyncApp(
        name="lam",
        client=client,
        authorize=authorize,
        # Listeners only ack and hand off, so answering after them is immediate, and bolt
        # need not poll for the ack (its runner does, every 10 ms, otherwise).
        process_before_response=True,
        # LAM's own guard verified the signature before dispatch.
        request_verification_enabled=False,
        logger=logging.getLogger("lam.slack.bolt"),
    )
    app.use(RequestContext())
    register(app, hand_off)
    return app


async def dispatch(
    app: AsyncApp, payload: object, headers: Mapping[str, str] | None = None
) -> BoltResponse:
    """Run one verified payload through bolt; a malformed one is a 400, never an exception."""
    try:
        body = check_payload(payload)
    except MalformedPayload as error:
        return BoltResponse(status=400, body=json.dumps({"error": f"malformed payload: {error}"}))
    forwarded: dict[str, str | Sequence[str]] = {
        name.lower(): value
        for name in FORWARDED_HEADERS
        if headers is not None and (value := headers.get(name)) is not None
    }
    # "socket_mode" tells bolt the payload is already verified and parsed; for HTTP,
    # LAM's guard did both.
    request = AsyncBoltRequest(body=body, headers=forwarded or None, mode="socket_mode")
    try:
        return await app.async_dispatch(request)
    except Exception:
        log.exception("slack.dispatch_failed")
        return BoltResponse(status=400, body=json.dumps({"error": "malformed payload"}))
