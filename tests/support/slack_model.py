"""The local Slack's vocabulary: ids and tokens, what it records, signing, and small helpers.

Everything here is plain data or a pure function; ``tests.support.slack`` builds the
simulator from it and re-exports what tests use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from multidict import CIMultiDictProxy

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
    at: float = field(default_factory=time.perf_counter)
    """When the simulator received it (``time.perf_counter``), for latency measurements."""

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
    at: float = field(default_factory=time.perf_counter)
    """When the simulator received it (``time.perf_counter``), for latency measurements."""


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
class Fault:
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


async def parse_args(request: web.Request) -> JSON:
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


def bearer_token(request: web.Request, args: JSON) -> str | None:
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        return authorization.removeprefix("Bearer ").strip()
    token = args.get("token")
    return str(token) if token else None


def json_arg(args: JSON, name: str, default: Any) -> Any:
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


def flag(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in {"true", "1"})


def ts_key(ts: str) -> tuple[int, int]:
    seconds, _, fraction = ts.partition(".")
    return int(seconds), int(fraction or 0)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(5).upper()
