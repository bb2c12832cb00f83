"""A local Slack for the tests: the Web API, Socket Mode and signed deliveries, on loopback.

``SlackSimulator`` is an async context manager that serves, on a free 127.0.0.1 port:

- the Web API under ``sim.api_url`` (ends in ``/api/``: pass it as ``SLACK_API_URL`` or as
  ``AsyncWebClient(base_url=...)``). It checks the bearer token, answers as Slack does,
  keeps messages, views, uploads and seeded users, groups and channels, and records every
  call in ``sim.calls``;
- the upload URLs that ``files.getUploadURLExternal`` hands out (``files_upload_v2``);
- Socket Mode: ``apps.connections.open`` (app-level token) returns ``ws://…/socket?ticket=…``,
  the server sends ``hello`` on connect, ``socket_send`` sends an envelope and returns its
  ack, ``socket_disconnect`` asks the client to reconnect;
- ``response_url`` endpoints (``/response/{id}``) that record what an app posts there.

It also plays Slack towards an app under test over HTTP: ``send_event``, ``send_command``,
``send_block_action`` and ``send_view_submission`` sign realistic payloads with
``SlackSigner`` and return a ``Delivery`` (status, body, time to response); ``send_raw``
sends anything at all, for forged signatures, stale timestamps and malformed bodies.

Tests wait on recorded state (``wait_for_call``, ``wait_for_socket``, …), which wakes on an
``asyncio.Condition`` as each record lands: nothing here polls or sleeps.

The simulator is put together from its halves: ``slack_web_api`` (the Web API, uploads,
response_urls), ``slack_socket`` (Socket Mode) and ``slack_payloads`` (what Slack sends),
over the records and helpers of ``slack_model``; import everything from here.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict, deque
from collections.abc import Callable
from contextlib import AsyncExitStack

import aiohttp
from aiohttp import web

from tests.support.slack_model import (
    APP_ID,
    APP_TOKEN,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    DEFAULT_CHANNELS,
    DEFAULT_USERGROUPS,
    DEFAULT_USERS,
    JSON,
    SIGNING_SECRET,
    TEAM_DOMAIN,
    TEAM_ID,
    VERIFICATION_TOKEN,
    WAIT_TIMEOUT,
    ApiCall,
    Delivery,
    EphemeralMessage,
    Fault,
    Message,
    ResponsePost,
    SlackApiError,
    SlackChannel,
    SlackSigner,
    SlackUser,
    SlackUserGroup,
    SocketAck,
    SocketConnection,
    T,
    UploadedFile,
    serve,
    ts_key,
)
from tests.support.slack_payloads import Payloads
from tests.support.slack_socket import SocketMode
from tests.support.slack_web_api import WebApi

# The waits take a ``timeout`` instead of leaving it to the caller's ``asyncio.timeout`` so
# that, when it expires, the failure says what was awaited and what arrived instead.
# ruff: noqa: ASYNC109
__all__ = [
    "APP_ID",
    "APP_TOKEN",
    "BOT_ID",
    "BOT_TOKEN",
    "BOT_USER_ID",
    "SIGNING_SECRET",
    "TEAM_DOMAIN",
    "TEAM_ID",
    "VERIFICATION_TOKEN",
    "WAIT_TIMEOUT",
    "ApiCall",
    "Delivery",
    "EphemeralMessage",
    "Message",
    "ResponsePost",
    "SlackApiError",
    "SlackChannel",
    "SlackSigner",
    "SlackSimulator",
    "SlackUser",
    "SlackUserGroup",
    "SocketAck",
    "SocketConnection",
    "UploadedFile",
    "serve",
]


class SlackSimulator(WebApi, SocketMode, Payloads):
    """A fake Slack on loopback; use ``async with SlackSimulator() as sim``."""

    def __init__(
        self,
        *,
        bot_token: str = BOT_TOKEN,
        app_token: str = APP_TOKEN,
        signing_secret: str = SIGNING_SECRET,
        users: tuple[SlackUser, ...] = DEFAULT_USERS,
        usergroups: tuple[SlackUserGroup, ...] = DEFAULT_USERGROUPS,
        channels: tuple[SlackChannel, ...] = DEFAULT_CHANNELS,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signer = SlackSigner(signing_secret)
        self.team_id = TEAM_ID
        self.app_id = APP_ID
        self.bot_user_id = BOT_USER_ID
        self.users = {user.id: user for user in users}
        self.usergroups = {group.id: group for group in usergroups}
        self.channels = {channel.id: channel for channel in channels}

        self.calls: list[ApiCall] = []
        self.ephemerals: list[EphemeralMessage] = []
        self.views: dict[str, JSON] = {}
        """Modals opened or updated, by view id."""
        self.home_views: dict[str, JSON] = {}
        """App Home tabs published, by user id."""
        self.uploads: dict[str, UploadedFile] = {}
        self.response_posts: list[ResponsePost] = []
        self.socket_connections: list[SocketConnection] = []
        self.acks: list[SocketAck] = []

        self._messages: dict[str, dict[str, Message]] = defaultdict(dict)
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._triggers: dict[str, float | None] = {}
        self._tickets: set[str] = set()
        self._response_urls: dict[str, tuple[str | None, str | None]] = {}
        self._pending_acks: dict[str, asyncio.Future[SocketAck]] = {}
        self._changed = asyncio.Condition()
        self._ts = itertools.count(1)
        self._stack = AsyncExitStack()
        self._http: aiohttp.ClientSession | None = None
        self._base_url: str | None = None
        self._methods: dict[str, Callable[[JSON], JSON]] = {
            "api.test": lambda args: {"ok": True, "args": args},
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "apps.connections.open": self._apps_connections_open,
        }

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> SlackSimulator:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/v1/{file_id}", self._upload)
        app.router.add_post("/response/{response_id}", self._response_url)
        app.router.add_get("/socket", self._socket)
        self._base_url = await self._stack.enter_async_context(serve(app))
        self._stack.push_async_callback(self._close_sockets)
        self._http = await self._stack.enter_async_context(aiohttp.ClientSession())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def _close_sockets(self) -> None:
        for connection in self.socket_connections:
            await connection.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        if self._base_url is None:
            raise RuntimeError("the SlackSimulator has not been started: use `async with`")
        return self._base_url

    @property
    def api_url(self) -> str:
        """The Web API base URL, ``http://127.0.0.1:PORT/api/``, as slack_sdk expects it."""
        return f"{self.base_url}/api/"

    # -- recorded state ----------------------------------------------------------------

    def calls_to(self, method: str) -> list[ApiCall]:
        return [call for call in self.calls if call.method == method]

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[ApiCall], bool] | None = None,
        *,
        timeout: float = WAIT_TIMEOUT,
    ) -> ApiCall:
        """The first call of ``method``, made or still to come, that ``predicate`` accepts."""
        calls = await self.wait_for_calls(method, 1, predicate, timeout=timeout)
        return calls[0]

    async def wait_for_calls(
        self,
        method: str,
        count: int,
        predicate: Callable[[ApiCall], bool] | None = None,
        *,
        timeout: float = WAIT_TIMEOUT,
    ) -> list[ApiCall]:
        """The first ``count`` calls of ``method`` that ``predicate`` accepts, once there are."""

        def matching() -> list[ApiCall] | None:
            found = [c for c in self.calls_to(method) if predicate is None or predicate(c)]
            return found[:count] if len(found) >= count else None

        def failure() -> str:
            seen = [f"{call.method}({call.response.get('error', 'ok')})" for call in self.calls]
            return f"{count} matching {method!r} call(s) not made within {timeout}s; seen: {seen}"

        return await self._wait(matching, timeout, failure)

    def message(self, channel: str, ts: str) -> Message:
        """The current state of message ``ts`` in ``channel``."""
        try:
            return self._messages[channel][ts]
        except KeyError:
            known = sorted(self._messages.get(channel, {}))
            raise KeyError(f"no message {ts!r} in channel {channel!r}; it has {known}") from None

    def messages(self, channel: str, *, thread_ts: str | None = None) -> list[Message]:
        """The messages of ``channel`` in order, replies too; with ``thread_ts``, its replies."""
        found = sorted(self._messages.get(channel, {}).values(), key=lambda m: ts_key(m.ts))
        if thread_ts is None:
            return [m for m in found if not m.deleted]
        return [m for m in found if m.thread_ts == thread_ts and m.ts != thread_ts]

    async def wait_for_response_post(
        self,
        predicate: Callable[[ResponsePost], bool] | None = None,
        *,
        timeout: float = WAIT_TIMEOUT,
    ) -> ResponsePost:
        """The first post to a ``response_url`` that ``predicate`` accepts."""

        def matching() -> ResponsePost | None:
            posts = (p for p in self.response_posts if predicate is None or predicate(p))
            return next(posts, None)

        return await self._wait(
            matching, timeout, lambda: f"no matching response_url post within {timeout}s"
        )

    async def wait_for(
        self, found: Callable[[], T | None], *, what: str, timeout: float = WAIT_TIMEOUT
    ) -> T:
        """``found()`` once it is not ``None``, re-checked each time the simulator records
        something; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
        return await self._wait(found, timeout, lambda: f"{what} not seen within {timeout}s")

    async def _wait(
        self, found: Callable[[], T | None], timeout: float, why: Callable[[], str]
    ) -> T:
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    while (result := found()) is None:
                        await self._changed.wait()
            except TimeoutError:
                raise TimeoutError(why()) from None
        return result

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- faults ------------------------------------------------------------------------

    def rate_limit(self, method: str, *, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with HTTP 429 and ``Retry-After``."""
        for _ in range(times):
            self._faults[method].append(Fault(429, "ratelimited", retry_after))

    def fail(self, method: str, error: str, *, times: int = 1, status: int = 200) -> None:
        """Answer the next ``times`` calls of ``method`` with ``{"ok": false, "error": error}``."""
        for _ in range(times):
            self._faults[method].append(Fault(status, error))
