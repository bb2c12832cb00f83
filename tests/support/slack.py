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
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import secrets
import socket
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

# The waits take a ``timeout`` instead of leaving it to the caller's ``asyncio.timeout`` so
# that, when it expires, the failure says what was awaited and what arrived instead.
# ruff: noqa: ASYNC109

JSON = dict[str, Any]
T = TypeVar("T")

TEAM_ID = "T0LAMTEST"
TEAM_DOMAIN = "lam-test"
APP_ID = "A0LAMAPP"
BOT_ID = "B0LAMBOT"
BOT_USER_ID = "U0LAMBOT"
BOT_TOKEN = "xoxb-0000-lam-test-bot-token"
APP_TOKEN = "xapp-1-A0LAMAPP-0000-lam-test-app-token"
SIGNING_SECRET = "lam-test-signing-secret"
VERIFICATION_TOKEN = "lam-test-deprecated-verification-token"

WAIT_TIMEOUT = 5.0
"""Seconds a ``wait_for_*`` or ``socket_send`` waits before it fails the test."""
TRIGGER_LIFETIME = 3.0
"""Seconds a trigger_id stays valid for ``views.open``, as on Slack."""
MAX_TEXT = 40_000
"""Longest ``text`` Slack accepts in a message (``msg_too_long`` beyond)."""
MAX_BLOCKS = 50
"""Most blocks Slack accepts in a message (``invalid_blocks`` beyond)."""
APP_TOKEN_METHODS = frozenset({"apps.connections.open"})
BOT_SCOPES = (
    "app_mentions:read,channels:read,chat:write,commands,files:write,groups:read,"
    "im:history,im:read,usergroups:read,users:read"
)
"""The scopes ``auth.test`` reports in ``X-OAuth-Scopes`` (bolt keeps them in its context)."""


@dataclass(frozen=True)
class SlackUser:
    """A seeded workspace member, as ``users.info`` describes it."""

    id: str
    name: str
    display_name: str = ""
    real_name: str = ""
    team_id: str = TEAM_ID
    is_bot: bool = False
    deleted: bool = False


@dataclass(frozen=True)
class SlackUserGroup:
    """A seeded user group (``subteam``) with its members' ids."""

    id: str
    handle: str
    name: str
    users: tuple[str, ...] = ()
    team_id: str = TEAM_ID


@dataclass(frozen=True)
class SlackChannel:
    """A seeded conversation; a DM (``is_im``) names the other member in ``user``."""

    id: str
    name: str = ""
    is_private: bool = False
    is_im: bool = False
    user: str | None = None
    is_archived: bool = False


DEFAULT_USERS = (
    SlackUser("U0ALICE", "alice", "Alice", "Alice Adams"),
    SlackUser("U0BOB", "bob", "Bob", "Bob Brown"),
    SlackUser("U0CAROL", "carol", "Carol", "Carol Chen"),
    SlackUser("U0DAVE", "dave", "Dave", "Dave Diaz"),
    SlackUser("U0ERIN", "erin", "Erin", "Erin Evans"),
    SlackUser(BOT_USER_ID, "lam", "LAM", "LAM", is_bot=True),
)
DEFAULT_USERGROUPS = (
    SlackUserGroup("S0LEADS", "leads", "Leads", ("U0BOB", "U0ERIN")),
    SlackUserGroup("S0DEVS", "developers", "Developers", ("U0ALICE", "U0DAVE")),
)
DEFAULT_CHANNELS = (
    SlackChannel("C0OPS", "ops"),
    SlackChannel("C0PROD", "prod-ops", is_private=True),
    SlackChannel("C0AUDIT", "lam-audit"),
    SlackChannel("C0OLD", "old-ops", is_archived=True),
    SlackChannel("D0ALICE", is_im=True, user="U0ALICE"),
)


@dataclass(frozen=True)
class ApiCall:
    """One Web API call as the simulator received and answered it."""

    method: str
    args: Mapping[str, Any]
    """Query, form and JSON arguments merged; JSON values keep their types."""
    headers: CIMultiDictProxy[str]
    token: str | None
    status: int
    response: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))


@dataclass
class Message:
    """A message in a channel: posted by the bot, or by a user through a built event."""

    channel: str
    ts: str
    user: str
    text: str = ""
    blocks: list[Any] = field(default_factory=list)
    attachments: list[Any] = field(default_factory=list)
    thread_ts: str | None = None
    metadata: Any = None
    files: list[JSON] = field(default_factory=list)
    updates: int = 0
    """How many times ``chat.update`` (or a ``replace_original`` response) changed it."""
    deleted: bool = False

    def as_json(self) -> JSON:
        message: JSON = {"type": "message", "user": self.user, "text": self.text, "ts": self.ts}
        if self.user == BOT_USER_ID:
            message |= {"bot_id": BOT_ID, "app_id": APP_ID}
        message |= {"team": TEAM_ID, "blocks": self.blocks}
        if self.attachments:
            message["attachments"] = self.attachments
        if self.thread_ts is not None:
            message["thread_ts"] = self.thread_ts
        if self.metadata is not None:
            message["metadata"] = self.metadata
        if self.files:
            message["files"] = self.files
        return message


@dataclass(frozen=True)
class EphemeralMessage:
    """A ``chat.postEphemeral`` message, seen only by ``user``."""

    channel: str
    user: str
    message_ts: str
    text: str
    blocks: list[Any]
    thread_ts: str | None


@dataclass
class UploadedFile:
    """A file on its way through ``files_upload_v2``: URL issued, bytes uploaded, completed."""

    id: str
    filename: str
    length: int
    content: bytes | None = None
    title: str | None = None
    channels: list[str] = field(default_factory=list)
    thread_ts: str | None = None
    initial_comment: str | None = None
    completed: bool = False


@dataclass(frozen=True)
class ResponsePost:
    """What an app posted to a ``response_url`` the simulator issued."""

    response_id: str
    body: Mapping[str, Any]
    headers: CIMultiDictProxy[str]
    channel: str | None
    message_ts: str | None


@dataclass(frozen=True)
class SocketAck:
    """A Socket Mode acknowledgement: the envelope id and the optional response payload."""

    envelope_id: str
    payload: Mapping[str, Any] | None
    connection: int
    raw: str


@dataclass
class SocketConnection:
    """One Socket Mode WebSocket; ``number`` counts connections from 1 in connect order."""

    number: int
    ticket: str
    ws: web.WebSocketResponse
    received: list[str] = field(default_factory=list)
    """Every text frame the client sent on this connection, acks included."""

    @property
    def open(self) -> bool:
        return not self.ws.closed


@dataclass(frozen=True)
class Delivery:
    """The app's answer to a request the simulator sent it, and how long it took."""

    status: int
    body: str
    headers: CIMultiDictProxy[str]
    elapsed: float
    """Seconds from sending the request to reading the whole response."""
    request_body: str
    payload: Mapping[str, Any] | None
    """The event envelope, command fields or interaction payload that was sent."""

    def json(self) -> Any:
        return json.loads(self.body)


class SlackSigner:
    """Signs request bodies as Slack does: ``v0=`` HMAC-SHA256 of ``v0:{timestamp}:{body}``."""

    def __init__(self, signing_secret: str) -> None:
        self.signing_secret = signing_secret

    def signature(self, body: str | bytes, timestamp: str | int) -> str:
        raw = body.encode() if isinstance(body, str) else body
        base = b"v0:" + str(timestamp).encode() + b":" + raw
        digest = hmac.new(self.signing_secret.encode(), base, hashlib.sha256).hexdigest()
        return f"v0={digest}"

    def headers(self, body: str | bytes, *, timestamp: str | int | None = None) -> dict[str, str]:
        """The two signature headers for ``body``; ``timestamp`` (default now) may be forged."""
        stamp = str(int(time.time())) if timestamp is None else str(timestamp)
        return {
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": self.signature(body, stamp),
        }


class SlackApiError(Exception):
    """A Web API method refuses the call with Slack's ``error`` code."""

    def __init__(self, error: str, status: int = 200) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


@dataclass
class _Fault:
    status: int
    error: str
    retry_after: int | None = None


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp application on a free 127.0.0.1 port; yields ``http://127.0.0.1:PORT``.

    The socket is bound before the server starts, so no other process can take the port.
    """
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        port = int(listener.getsockname()[1])
        await web.SockSite(runner, listener).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        listener.close()


class SlackSimulator:
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
        self._faults: dict[str, deque[_Fault]] = defaultdict(deque)
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
        found = sorted(self._messages.get(channel, {}).values(), key=lambda m: _ts_key(m.ts))
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
            self._faults[method].append(_Fault(429, "ratelimited", retry_after))

    def fail(self, method: str, error: str, *, times: int = 1, status: int = 200) -> None:
        """Answer the next ``times`` calls of ``method`` with ``{"ok": false, "error": error}``."""
        for _ in range(times):
            self._faults[method].append(_Fault(status, error))

    # -- the Web API -------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        headers: CIMultiDict[str] = CIMultiDict()
        try:
            args = await _parse_args(request)
        except ValueError:
            args = {}
            token = _token(request, args)
            status, body = 200, {"ok": False, "error": "invalid_json"}
        else:
            token = _token(request, args)
            status, body = self._answer(method, token, args, headers)
        received = CIMultiDictProxy(CIMultiDict(request.headers))
        self.calls.append(ApiCall(method, args, received, token, status, body))
        await self._notify()
        return web.json_response(body, status=status, headers=headers)

    def _answer(
        self, method: str, token: str | None, args: JSON, headers: CIMultiDict[str]
    ) -> tuple[int, JSON]:
        handler = self._methods.get(method)
        if handler is None:
            return 404, {"ok": False, "error": "unknown_method", "req_method": method}
        wanted = self.app_token if method in APP_TOKEN_METHODS else self.bot_token
        if token is None:
            return 200, {"ok": False, "error": "not_authed"}
        if token in {self.app_token, self.bot_token} and token != wanted:
            return 200, {"ok": False, "error": "not_allowed_token_type"}
        if token != wanted:
            return 200, {"ok": False, "error": "invalid_auth"}
        if self._faults[method]:
            fault = self._faults[method].popleft()
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            return fault.status, {"ok": False, "error": fault.error}
        if method == "auth.test":
            headers["X-OAuth-Scopes"] = BOT_SCOPES
        try:
            return 200, handler(args)
        except SlackApiError as refusal:
            return refusal.status, {"ok": False, "error": refusal.error}

    def _auth_test(self, args: JSON) -> JSON:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": "LAM Test",
            "user": self.users[self.bot_user_id].name if self.bot_user_id in self.users else "lam",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: JSON) -> JSON:
        channel = self._writable_channel(args.get("channel"))
        message = Message(channel=channel, ts=self._next_ts(), user=self.bot_user_id)
        thread_ts = args.get("thread_ts")
        message.thread_ts = str(thread_ts) if thread_ts else None
        self._fill(message, args, require_content=True)
        self._messages[channel][message.ts] = message
        return {"ok": True, "channel": channel, "ts": message.ts, "message": message.as_json()}

    def _chat_update(self, args: JSON) -> JSON:
        channel = self._channel(args.get("channel")).id
        message = self._messages[channel].get(str(args.get("ts")))
        if message is None or message.deleted:
            raise SlackApiError("message_not_found")
        if message.user != self.bot_user_id:
            raise SlackApiError("cant_update_message")
        self._fill(message, args, require_content=False)
        message.updates += 1
        answer = {"ok": True, "channel": channel, "ts": message.ts, "text": message.text}
        return answer | {"message": message.as_json()}

    def _chat_post_ephemeral(self, args: JSON) -> JSON:
        channel = self._writable_channel(args.get("channel"))
        user = str(args.get("user") or "")
        if user not in self.users:
            raise SlackApiError("user_not_found")
        blocks = _json_arg(args, "blocks", [])
        if not args.get("text") and not blocks and not args.get("attachments"):
            raise SlackApiError("no_text")
        ephemeral = EphemeralMessage(
            channel,
            user,
            self._next_ts(),
            str(args.get("text") or ""),
            blocks,
            str(args["thread_ts"]) if args.get("thread_ts") else None,
        )
        self.ephemerals.append(ephemeral)
        return {"ok": True, "message_ts": ephemeral.message_ts}

    def _chat_get_permalink(self, args: JSON) -> JSON:
        channel = self._channel(args.get("channel")).id
        ts = str(args.get("message_ts") or "")
        if not ts:
            raise SlackApiError("message_not_found")
        link = f"https://{TEAM_DOMAIN}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        return {"ok": True, "channel": channel, "permalink": link}

    def _views_open(self, args: JSON) -> JSON:
        trigger_id = str(args.get("trigger_id") or "")
        if trigger_id not in self._triggers:
            raise SlackApiError("invalid_trigger_id")
        issued = self._triggers[trigger_id]
        if issued is None:
            raise SlackApiError("exchanged_trigger_id")
        if time.monotonic() - issued > TRIGGER_LIFETIME:
            raise SlackApiError("expired_trigger_id")
        self._triggers[trigger_id] = None
        view = self._view(_json_arg(args, "view", None), view_id=_new_id("V"))
        self.views[view["id"]] = view
        return {"ok": True, "view": view}

    def _views_update(self, args: JSON) -> JSON:
        view_id = args.get("view_id")
        if not view_id and args.get("external_id"):
            matches = [v for v in self.views.values() if v["external_id"] == args["external_id"]]
            view_id = matches[0]["id"] if matches else None
        current = self.views.get(str(view_id))
        if current is None:
            raise SlackApiError("not_found")
        if args.get("hash") and args["hash"] != current["hash"]:
            raise SlackApiError("hash_conflict")
        view = self._view(_json_arg(args, "view", None), view_id=current["id"])
        self.views[view["id"]] = view
        return {"ok": True, "view": view}

    def _views_publish(self, args: JSON) -> JSON:
        user = str(args.get("user_id") or "")
        if user not in self.users:
            raise SlackApiError("user_not_found")
        view = self._view(_json_arg(args, "view", None), view_id=_new_id("V"))
        if view["type"] != "home":
            raise SlackApiError("invalid_arguments")
        self.home_views[user] = view
        return {"ok": True, "view": view}

    def _usergroups_list(self, args: JSON) -> JSON:
        with_users = _flag(args.get("include_users"))
        groups = []
        for group in self.usergroups.values():
            described: JSON = {
                "id": group.id,
                "team_id": group.team_id,
                "is_usergroup": True,
                "name": group.name,
                "description": "",
                "handle": group.handle,
                "is_external": False,
                "date_delete": 0,
                "user_count": len(group.users),
            }
            if with_users:
                described["users"] = list(group.users)
            groups.append(described)
        return {"ok": True, "usergroups": groups}

    def _usergroups_users_list(self, args: JSON) -> JSON:
        group = self.usergroups.get(str(args.get("usergroup") or ""))
        if group is None:
            raise SlackApiError("no_such_subteam")
        return {"ok": True, "users": list(group.users)}

    def _users_info(self, args: JSON) -> JSON:
        user = self.users.get(str(args.get("user") or ""))
        if user is None:
            raise SlackApiError("user_not_found")
        profile = {
            "display_name": user.display_name,
            "display_name_normalized": user.display_name,
            "real_name": user.real_name,
            "real_name_normalized": user.real_name,
            "team": user.team_id,
        }
        described = {
            "id": user.id,
            "team_id": user.team_id,
            "name": user.name,
            "deleted": user.deleted,
            "real_name": user.real_name,
            "is_bot": user.is_bot,
            "is_app_user": False,
            "profile": profile,
        }
        return {"ok": True, "user": described}

    def _conversations_info(self, args: JSON) -> JSON:
        channel = self._channel(args.get("channel"))
        described: JSON = {
            "id": channel.id,
            "created": 1_700_000_000,
            "is_archived": channel.is_archived,
            "is_im": channel.is_im,
            "context_team_id": self.team_id,
        }
        if channel.is_im:
            described |= {"user": channel.user, "is_user_deleted": False}
        else:
            described |= {
                "name": channel.name,
                "is_channel": not channel.is_private,
                "is_group": channel.is_private,
                "is_private": channel.is_private,
                "is_member": True,
            }
        return {"ok": True, "channel": described}

    def _files_get_upload_url(self, args: JSON) -> JSON:
        filename = str(args.get("filename") or "")
        try:
            length = int(args.get("length") or "")
        except ValueError:
            raise SlackApiError("invalid_arguments") from None
        if not filename:
            raise SlackApiError("invalid_arguments")
        upload = UploadedFile(_new_id("F"), filename, length)
        self.uploads[upload.id] = upload
        url = f"{self.base_url}/upload/v1/{upload.id}"
        return {"ok": True, "upload_url": url, "file_id": upload.id}

    def _files_complete_upload(self, args: JSON) -> JSON:
        items = _json_arg(args, "files", None)
        if not isinstance(items, list) or not items:
            raise SlackApiError("invalid_arguments")
        channels = [str(c) for c in str(args.get("channels") or "").split(",") if c]
        if args.get("channel_id"):
            channels.append(str(args["channel_id"]))
        channels = [self._writable_channel(channel) for channel in channels]
        uploads = []
        for item in items:
            upload = self.uploads.get(str(item.get("id")) if isinstance(item, dict) else "")
            if upload is None or upload.content is None:
                raise SlackApiError("file_not_found")
            uploads.append((upload, item))
        thread_ts = str(args["thread_ts"]) if args.get("thread_ts") else None
        comment = str(args["initial_comment"]) if args.get("initial_comment") else None
        described = []
        for upload, item in uploads:
            upload.title = str(item.get("title") or upload.filename)
            upload.channels, upload.thread_ts, upload.initial_comment = channels, thread_ts, comment
            upload.completed = True
            described.append(self._file_json(upload))
        for channel in channels:
            message = Message(channel, self._next_ts(), self.bot_user_id, text=comment or "")
            message.thread_ts, message.files = thread_ts, described
            self._messages[channel][message.ts] = message
        return {"ok": True, "files": described}

    def _apps_connections_open(self, args: JSON) -> JSON:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        url = self.base_url.replace("http://", "ws://", 1)
        return {"ok": True, "url": f"{url}/socket?ticket={ticket}&app_id={self.app_id}"}

    def _file_json(self, upload: UploadedFile) -> JSON:
        return {
            "id": upload.id,
            "created": int(time.time()),
            "name": upload.filename,
            "title": upload.title,
            "user": self.bot_user_id,
            "size": len(upload.content or b""),
            "url_private": f"{self.base_url}/files/{upload.id}/{upload.filename}",
            "permalink": f"https://{TEAM_DOMAIN}.slack.com/files/{self.bot_user_id}/{upload.id}",
            "channels": upload.channels,
        }

    def _channel(self, reference: object) -> SlackChannel:
        """A channel by id, ``#name`` or name; a user id means the DM with that user."""
        key = str(reference or "")
        if key in self.channels:
            return self.channels[key]
        for channel in self.channels.values():
            if channel.name and key.lstrip("#") == channel.name:
                return channel
        if key in self.users:
            return self.dm_channel(key)
        raise SlackApiError("channel_not_found")

    def _writable_channel(self, reference: object) -> str:
        channel = self._channel(reference)
        if channel.is_archived:
            raise SlackApiError("is_archived")
        return channel.id

    def _fill(self, message: Message, args: JSON, *, require_content: bool) -> None:
        blocks = _json_arg(args, "blocks", None)
        attachments = _json_arg(args, "attachments", None)
        text = args.get("text")
        if require_content and not text and not blocks and not attachments:
            raise SlackApiError("no_text")
        if text is not None and len(str(text)) > MAX_TEXT:
            raise SlackApiError("msg_too_long")
        if blocks is not None and (not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS):
            raise SlackApiError("invalid_blocks")
        if text is not None:
            message.text = str(text)
        if blocks is not None:
            message.blocks = blocks
        if attachments is not None:
            message.attachments = attachments
        if "metadata" in args:
            message.metadata = _json_arg(args, "metadata", None)

    def _view(self, view: object, *, view_id: str) -> JSON:
        if not isinstance(view, dict) or view.get("type") not in {"modal", "home"}:
            raise SlackApiError("invalid_arguments")
        return {
            "id": view_id,
            "team_id": self.team_id,
            "type": view["type"],
            "blocks": view.get("blocks", []),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": view.get("title"),
            "submit": view.get("submit"),
            "close": view.get("close"),
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "external_id": view.get("external_id", ""),
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.app_id,
            "app_installed_team_id": self.team_id,
            "bot_id": BOT_ID,
        }

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def dm_channel(self, user: str) -> SlackChannel:
        """The DM channel between the bot and ``user``, created on first use."""
        for channel in self.channels.values():
            if channel.is_im and channel.user == user:
                return channel
        channel = SlackChannel("D" + user.removeprefix("U"), is_im=True, user=user)
        self.channels[channel.id] = channel
        return channel

    # -- uploads and response_urls -----------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="file not found")
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            part = form.get("file")
            content = part.file.read() if isinstance(part, web.FileField) else str(part).encode()
        else:
            content = await request.read()
        upload.content = content
        await self._notify()
        return web.Response(text=f"OK - {len(content)}")

    async def _response_url(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        if response_id not in self._response_urls:
            return web.Response(status=404, text="no_service")
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(body, dict):
            return web.Response(status=400, text="invalid_payload")
        channel, message_ts = self._response_urls[response_id]
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        self.response_posts.append(ResponsePost(response_id, body, headers, channel, message_ts))
        original = self._messages.get(channel or "", {}).get(message_ts or "")
        if original is not None and _flag(body.get("delete_original")):
            original.deleted = True
        elif original is not None and _flag(body.get("replace_original")):
            self._fill(original, body, require_content=False)
            original.updates += 1
        await self._notify()
        return web.Response(text="ok")

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

    # -- payloads Slack sends ----------------------------------------------------------

    def new_trigger_id(self) -> str:
        """A trigger_id ``views.open`` accepts once, within ``TRIGGER_LIFETIME`` seconds."""
        trigger_id = f"{secrets.randbelow(10**11)}.{int(time.time())}.{secrets.token_hex(16)}"
        self._triggers[trigger_id] = time.monotonic()
        return trigger_id

    def new_response_url(self, *, channel: str | None = None, message_ts: str | None = None) -> str:
        """A ``response_url`` on the simulator; ``replace_original`` there edits ``message_ts``."""
        response_id = uuid.uuid4().hex
        self._response_urls[response_id] = (channel, message_ts)
        return f"{self.base_url}/response/{response_id}"

    def event_callback(self, event: Mapping[str, Any], *, event_id: str | None = None) -> JSON:
        """The Events API envelope around ``event``, with a fresh ``event_id`` unless given."""
        return {
            "token": VERIFICATION_TOKEN,
            "team_id": self.team_id,
            "context_team_id": self.team_id,
            "context_enterprise_id": None,
            "api_app_id": self.app_id,
            "event": dict(event),
            "type": "event_callback",
            "event_id": event_id or _new_id("Ev"),
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{secrets.token_urlsafe(24)}",
        }

    def app_mention(
        self,
        text: str,
        *,
        user: str = "U0ALICE",
        channel: str = "C0OPS",
        thread_ts: str | None = None,
    ) -> JSON:
        """An ``app_mention`` event (the bot's mention is prefixed unless present); stored."""
        mention = f"<@{self.bot_user_id}>"
        text = text if mention in text else f"{mention} {text}"
        return self._user_message("app_mention", text, user, channel, thread_ts, None)

    def direct_message(
        self, text: str, *, user: str = "U0ALICE", thread_ts: str | None = None
    ) -> JSON:
        """A ``message`` event in the user's DM with the bot (``channel_type: im``); stored."""
        channel = self.dm_channel(user).id
        return self._user_message("message", text, user, channel, thread_ts, "im")

    def _user_message(
        self,
        kind: str,
        text: str,
        user: str,
        channel: str,
        thread_ts: str | None,
        channel_type: str | None,
    ) -> JSON:
        ts = self._next_ts()
        self._messages[channel][ts] = Message(channel, ts, user, text=text, thread_ts=thread_ts)
        event: JSON = {
            "type": kind,
            "client_msg_id": str(uuid.uuid4()),
            "user": user,
            "text": text,
            "ts": ts,
            "team": self.team_id,
            "channel": channel,
            "event_ts": ts,
        }
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        if channel_type is not None:
            event["channel_type"] = channel_type
        return event

    def command_payload(
        self,
        command: str = "/lam",
        text: str = "",
        *,
        user: str = "U0ALICE",
        channel: str = "C0OPS",
    ) -> dict[str, str]:
        """The fields of a slash command invocation, as Slack form-encodes them."""
        return {
            "token": VERIFICATION_TOKEN,
            "team_id": self.team_id,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel,
            "channel_name": self._channel_name(channel),
            "user_id": user,
            "user_name": self.users[user].name if user in self.users else user.lower(),
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": self.new_response_url(channel=channel),
            "trigger_id": self.new_trigger_id(),
        }

    def block_actions_payload(
        self,
        action_id: str,
        value: str,
        *,
        user: str = "U0ALICE",
        channel: str = "C0OPS",
        message_ts: str | None = None,
        block_id: str = "lam_actions",
    ) -> JSON:
        """A ``block_actions`` payload: ``user`` clicked button ``action_id`` on ``message_ts``."""
        stored = self._messages.get(channel, {}).get(message_ts or "")
        message = stored.as_json() if stored is not None else {"type": "message", "ts": message_ts}
        return {
            "type": "block_actions",
            "user": self._user_json(user),
            "api_app_id": self.app_id,
            "token": VERIFICATION_TOKEN,
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel,
                "is_ephemeral": False,
            },
            "trigger_id": self.new_trigger_id(),
            "team": {"id": self.team_id, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": self._channel_name(channel)},
            "message": message,
            "state": {"values": {}},
            "response_url": self.new_response_url(channel=channel, message_ts=message_ts),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block_id,
                    "text": {"type": "plain_text", "text": action_id, "emoji": True},
                    "value": value,
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }

    def view_submission_payload(
        self,
        callback_id: str,
        values: Mapping[str, Mapping[str, str | Mapping[str, Any]]],
        *,
        user: str = "U0ALICE",
        private_metadata: str = "",
        view_id: str | None = None,
    ) -> JSON:
        """A ``view_submission`` payload; ``values`` maps block_id → action_id → value.

        A plain string value stands for a ``plain_text_input``; with ``view_id`` of a view the
        app opened, the payload carries that view's blocks and title.
        """
        state = {
            block: {
                action: {"type": "plain_text_input", "value": v} if isinstance(v, str) else dict(v)
                for action, v in actions.items()
            }
            for block, actions in values.items()
        }
        opened = self.views.get(view_id or "")
        view = (
            dict(opened)
            if opened is not None
            else self._view({"type": "modal"}, view_id=view_id or _new_id("V"))
        )
        view |= {"callback_id": callback_id, "private_metadata": private_metadata}
        view["state"] = {"values": state}
        return {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": TEAM_DOMAIN},
            "user": self._user_json(user),
            "api_app_id": self.app_id,
            "token": VERIFICATION_TOKEN,
            "trigger_id": self.new_trigger_id(),
            "view": view,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }

    def _user_json(self, user: str) -> JSON:
        name = self.users[user].name if user in self.users else user.lower()
        return {"id": user, "username": name, "name": name, "team_id": self.team_id}

    def _channel_name(self, channel: str) -> str:
        known = self.channels.get(channel)
        if known is None or known.is_im:
            return "directmessage"
        return known.name

    # -- signed HTTP delivery to the app under test ------------------------------------

    async def send_event(
        self,
        app_url: str,
        event: Mapping[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
    ) -> Delivery:
        """Deliver an event (or a whole ``event_callback``) as the Events API does.

        Pass the first delivery's ``event_id`` with ``retry_num`` to send Slack's retry.
        """
        envelope = (
            dict(event)
            if event.get("type") == "event_callback"
            else self.event_callback(event, event_id=event_id)
        )
        if event_id is not None:
            envelope["event_id"] = event_id
        headers = {}
        if retry_num is not None:
            headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": retry_reason}
        body = json.dumps(envelope)
        return await self.send_raw(
            app_url, body, content_type="application/json", headers=headers, payload=envelope
        )

    async def send_command(
        self,
        app_url: str,
        command: str = "/lam",
        text: str = "",
        *,
        user: str = "U0ALICE",
        channel: str = "C0OPS",
    ) -> Delivery:
        """Deliver a slash command, form-encoded, with a ``response_url`` on the simulator."""
        fields = self.command_payload(command, text, user=user, channel=channel)
        return await self.send_raw(app_url, urlencode(fields), payload=fields)

    async def send_block_action(
        self,
        app_url: str,
        action_id: str,
        value: str,
        *,
        user: str = "U0ALICE",
        channel: str = "C0OPS",
        message_ts: str | None = None,
        block_id: str = "lam_actions",
    ) -> Delivery:
        """Deliver a button click (``block_actions``) as the form field ``payload``."""
        payload = self.block_actions_payload(
            action_id, value, user=user, channel=channel, message_ts=message_ts, block_id=block_id
        )
        return await self.send_interaction(app_url, payload)

    async def send_view_submission(
        self,
        app_url: str,
        callback_id: str,
        values: Mapping[str, Mapping[str, str | Mapping[str, Any]]],
        *,
        user: str = "U0ALICE",
        private_metadata: str = "",
        view_id: str | None = None,
    ) -> Delivery:
        """Deliver a modal submission (``view_submission``) as the form field ``payload``."""
        payload = self.view_submission_payload(
            callback_id, values, user=user, private_metadata=private_metadata, view_id=view_id
        )
        return await self.send_interaction(app_url, payload)

    async def send_interaction(self, app_url: str, payload: Mapping[str, Any]) -> Delivery:
        """Deliver any interactivity payload, form-encoded as ``payload=<json>``."""
        body = urlencode({"payload": json.dumps(payload)})
        return await self.send_raw(app_url, body, payload=payload)

    async def send_raw(
        self,
        app_url: str,
        body: str | bytes,
        *,
        content_type: str = "application/x-www-form-urlencoded",
        headers: Mapping[str, str] | None = None,
        sign: bool = True,
        timestamp: str | int | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> Delivery:
        """POST ``body`` to the app, signed at ``timestamp`` (default now) unless ``sign`` is false.

        ``headers`` are added last, so they can replace the signature headers: sign one body
        and send another, or pair a good signature with a different timestamp.
        """
        assert self._http is not None, "the SlackSimulator has not been started"
        sent: dict[str, str] = {"Content-Type": content_type}
        if sign:
            sent |= self.signer.headers(body, timestamp=timestamp)
        sent |= dict(headers or {})
        raw = body.encode() if isinstance(body, str) else body
        started = time.perf_counter()
        async with self._http.post(app_url, data=raw, headers=sent) as response:
            text = await response.text()
            elapsed = time.perf_counter() - started
            answer_headers = CIMultiDictProxy(CIMultiDict(response.headers))
        return Delivery(
            response.status, text, answer_headers, elapsed, raw.decode(errors="replace"), payload
        )


async def _parse_args(request: web.Request) -> JSON:
    """Query, then body arguments; a JSON body keeps its types. Raises ValueError on bad JSON."""
    args: JSON = dict(request.query)
    if request.method != "POST" or not request.can_read_body:
        return args
    if request.content_type == "application/json":
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("a JSON body must be an object")
        return args | body
    form = await request.post()
    for name, value in form.items():
        args[name] = value.file.read() if isinstance(value, web.FileField) else value
    return args


def _token(request: web.Request, args: JSON) -> str | None:
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        return authorization.removeprefix("Bearer ").strip()
    token = args.get("token")
    return str(token) if token else None


def _json_arg(args: JSON, name: str, default: Any) -> Any:
    """An argument that a JSON body sends as a value and a form sends as a JSON string."""
    value = args.get(name, default)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise SlackApiError(
                f"invalid_{name}" if name == "blocks" else "invalid_arguments"
            ) from None
    return value


def _flag(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in {"true", "1"})


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, fraction = ts.partition(".")
    return int(seconds), int(fraction or 0)


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(5).upper()
