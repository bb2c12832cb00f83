"""A scripted OpenAI-compatible server on loopback, for the real ``openai`` client.

``ScriptedOpenAI.running()`` serves ``POST /v1/chat/completions`` on a free 127.0.0.1
port. Each call takes the next scripted reply from a queue: tool calls (``tool_calls``),
a text answer (``text``), an HTTP error (``http_error``, e.g. 429 with ``Retry-After``
or 500) or an answer that never comes (``stall``: held until the server stops, so the
client's own timeout fires). A reply may carry ``check``, an assertion run on the request
it answers. Every request is recorded in ``server.requests``.

A call with nothing scripted, a failed check or an unknown path is answered with an error
the client does not retry (``x-should-retry: false``) and recorded in
``server.failures``; ``assert_done()`` raises for those and for replies left unused.

``forbid_real_model_calls`` makes any ``openai`` client call to a non-loopback host fail
the test: use it in an autouse fixture. ``planner_on`` is an ``LLMPlanner`` (the real
client) talking to a running server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from aiohttp import web

from bot.audit import Redactor
from bot.planning.llm import LLMOptions, LLMPlanner

JSON = dict[str, Any]
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
NO_RETRY = {"x-should-retry": "false"}
"""Sent with the errors that report a broken script: retrying would hide the first one."""
QUICK_RETRY = {"retry-after-ms": "1"}
"""A 5xx that tells the client to retry after 1 ms, so tests do not wait on backoff."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received, as the client sent it."""

    number: int
    path: str
    headers: Mapping[str, str]
    body: JSON

    @property
    def messages(self) -> list[JSON]:
        messages: list[JSON] = self.body.get("messages", [])
        return messages

    @property
    def tool_names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.body.get("tools", [])]

    def tool(self, name: str) -> JSON:
        found: JSON = next(t for t in self.body.get("tools", []) if t["function"]["name"] == name)
        return found

    def contents(self, role: str) -> list[str]:
        """The text of every message from ``role``, in order."""
        return [m["content"] for m in self.messages if m["role"] == role and m.get("content")]

    @property
    def text(self) -> str:
        """Everything the model would read: messages and tools, as one JSON text."""
        return json.dumps(self.body, ensure_ascii=False)


Check = Callable[[RecordedRequest], None]


def data_blocks(prompt: str, label: str) -> list[str]:
    """The contents of every ``label`` data block in ``prompt``, matched by its own nonce."""
    pattern = rf"<<<DATA {label} (\w+)>>>\n(.*?)\n<<<END {label} \1>>>"
    return [body for _, body in re.findall(pattern, prompt, re.DOTALL)]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: JSON | str = field(default_factory=dict)
    """A dict is sent as JSON; a string is sent as it is (to send broken JSON)."""
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """One scripted answer to one request."""

    status: int = 200
    body: JSON | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    stall: bool = False
    check: Check | None = None


def tool_calls(
    *calls: ToolCall | tuple[str, JSON | str],
    content: str | None = None,
    usage: tuple[int, int] | None = (120, 30),
    check: Check | None = None,
) -> Reply:
    """The model calls these tools, in order; ``usage`` is (prompt, completion) tokens."""
    made = [c if isinstance(c, ToolCall) else ToolCall(*c) for c in calls]
    message: JSON = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "tool_calls": [
            {
                "id": call.id or f"call_{index}",
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": call.arguments
                    if isinstance(call.arguments, str)
                    else json.dumps(call.arguments),
                },
            }
            for index, call in enumerate(made, start=1)
        ],
    }
    return Reply(body=_completion(message, "tool_calls", usage), check=check)


def text(
    content: str, *, usage: tuple[int, int] | None = (120, 30), check: Check | None = None
) -> Reply:
    """The model answers in words and calls no tool."""
    message: JSON = {"role": "assistant", "content": content, "refusal": None}
    return Reply(body=_completion(message, "stop", usage), check=check)


def http_error(
    status: int,
    message: str = "scripted failure",
    *,
    retry_after: str | None = None,
    headers: Mapping[str, str] | None = None,
    check: Check | None = None,
) -> Reply:
    """An API error as OpenAI sends one; ``retry_after`` becomes the ``Retry-After`` header."""
    sent = dict(headers or {})
    if retry_after is not None:
        sent["retry-after"] = retry_after
    body = {"error": {"message": message, "type": "scripted", "code": str(status)}}
    return Reply(status=status, body=body, headers=sent, check=check)


def stall(*, check: Check | None = None) -> Reply:
    """No answer until the server stops: the client's timeout decides what happens."""
    return Reply(stall=True, check=check)


def _completion(message: JSON, finish_reason: str, usage: tuple[int, int] | None) -> JSON:
    body: JSON = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "scripted",
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
    }
    if usage is not None:
        prompt, completion = usage
        body["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return body


@asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free 127.0.0.1 port, bound before it starts; yields its URL."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        await web.SockSite(runner, listener).start()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        await runner.cleanup()
        listener.close()


class ScriptedOpenAI:
    """The server; ``async with ScriptedOpenAI.running() as server``."""

    def __init__(self) -> None:
        self.base_url = ""
        """``http://127.0.0.1:PORT/v1``, set once the server runs."""
        self.requests: list[RecordedRequest] = []
        self.failures: list[str] = []
        self._replies: deque[Reply] = deque()
        self._numbers = itertools.count(1)
        self._released = asyncio.Event()

    @classmethod
    @asynccontextmanager
    async def running(cls) -> AsyncIterator[ScriptedOpenAI]:
        server = cls()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", server._chat)
        app.router.add_route("*", "/{tail:.*}", server._unknown)
        async with _serve(app) as url:
            server.base_url = f"{url}/v1"
            try:
                yield server
            finally:
                # Stalled handlers return now, so the server stops without waiting on them.
                server._released.set()

    def enqueue(self, *replies: Reply) -> None:
        self._replies.extend(replies)

    @property
    def pending(self) -> int:
        return len(self._replies)

    def assert_done(self) -> None:
        """Fail on unexpected or refused calls, and on scripted replies never asked for."""
        problems = list(self.failures)
        if self._replies:
            problems.append(f"{len(self._replies)} scripted replies were never requested")
        if problems:
            raise AssertionError("scripted OpenAI server: " + "; ".join(problems))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        number = next(self._numbers)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return self._broken(f"call #{number} sent a body that is not JSON")
        recorded = RecordedRequest(number, request.path, dict(request.headers), body)
        self.requests.append(recorded)
        if not self._replies:
            last = recorded.contents("user")[-1:] or ["(no user message)"]
            return self._broken(f"unexpected call #{number}, nothing scripted; user: {last[0]!r}")
        reply = self._replies.popleft()
        if reply.check is not None:
            try:
                reply.check(recorded)
            except AssertionError as error:
                return self._broken(f"call #{number} failed its check: {error}")
        if reply.stall:
            await self._released.wait()
            return web.Response(status=503, headers=NO_RETRY)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        return self._broken(f"unexpected {request.method} {request.path}")

    def _broken(self, problem: str) -> web.Response:
        self.failures.append(problem)
        body = {"error": {"message": problem, "type": "scripted_server", "code": "unscripted"}}
        return web.json_response(body, status=500, headers=NO_RETRY)


MODEL = "lam-test-model"


def planner_on(
    server: ScriptedOpenAI, *, redactor: Redactor | None = None, **options: Any
) -> LLMPlanner:
    """An LLM planner on ``server`` with quick timeouts; ``options`` override ``LLMOptions``."""
    settings: dict[str, Any] = {
        "model": MODEL,
        "base_url": server.base_url,
        "api_key": "sk-lam-test-scripted",
        "timeout": 5.0,
        "max_retries": 2,
        **options,
    }
    return LLMPlanner(LLMOptions(**settings), redactor=redactor or Redactor())


def forbid_real_model_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ``openai`` client request to a host other than loopback fail the test.

    Clients built from the environment alone point at a closed loopback port instead of
    api.openai.com, and carry no real key.
    """
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")

    def check(request: Any) -> None:
        host = request.url.host
        if host not in LOOPBACK_HOSTS:
            pytest.fail(f"a test called a real model endpoint: {request.method} {request.url}")

    async_send = openai.AsyncOpenAI._send_request
    sync_send = openai.OpenAI._send_request

    async def guarded_async(self: openai.AsyncOpenAI, request: Any, **kwargs: Any) -> Any:
        check(request)
        return await async_send(self, request, **kwargs)

    def guarded_sync(self: openai.OpenAI, request: Any, **kwargs: Any) -> Any:
        check(request)
        return sync_send(self, request, **kwargs)

    monkeypatch.setattr(openai.AsyncOpenAI, "_send_request", guarded_async)
    monkeypatch.setattr(openai.OpenAI, "_send_request", guarded_sync)
