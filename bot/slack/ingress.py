"""The ingress process: Slack's deliveries acknowledged by a process that does nothing else.

Why a process: an ack must not wait for work. In one process every ack shares the event
loop, and the interpreter, with the work of the deliveries before it (planning, policy,
the store, Web API calls), and on a busy replica it waits behind that work. So ``lam
serve`` (``LAM_SLACK_INGRESS=process``, the default) starts this module as a child that
owns the HTTP port or the Socket Mode connection, runs LAM's guard, payload check and
ack listeners (``bot.slack.transport``, ``bot.slack.listeners``), and writes each
accepted payload to its parent, which does the work (``bot.slack.work``). The child
holds no state and no store connection; it only needs its configuration.

The pipe, one JSON object per line:

- parent → child (stdin): the ``IngressConfig`` (first line, secrets included, never on
  the command line), then ``{"answer": N, "status", "content_type", "body"}`` for each
  question, and ``{"sync": N}`` to learn when every delivery acknowledged so far has
  arrived. The end of stdin tells the child to stop.
- child → parent (stdout): ``{"listening": URL}`` once it takes deliveries, or
  ``{"failed": MESSAGE}`` when it cannot start; ``{"delivery": PAYLOAD}`` for each
  delivery acknowledged; ``{"ask": N, "path": P, "checks": {...}}`` for ``/readyz`` and
  ``/metrics``, which only the parent can answer (its own checks, e.g. the Socket Mode
  connection, go along); ``{"synced": N}``, after every delivery acknowledged before.

Nothing acknowledged is lost between the two: a payload is written to the pipe as its
ack is sent, the child writes out everything before it exits, and the parent reads the
pipe to its end, even when the child died. The child ignores SIGINT and SIGTERM: its
parent stops it (after a terminal's Ctrl-C, which both receive), so deliveries always
stop before the work does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError
from slack_sdk.web.async_client import AsyncWebClient

from bot.audit import Redactor
from bot.errors import ConfigError, LamError
from bot.health import PATHS, READY_TIMEOUT, Answer, Health, answer, response
from bot.logs import configure_logging
from bot.slack._guard import MAX_BODY
from bot.slack.app import Bot, build_app
from bot.slack.front import SlackFront
from bot.slack.transport import Listen, SocketConnection, accepting
from bot.slack.work import receive

log = structlog.get_logger("lam.slack")

LINE_LIMIT = 8 * MAX_BODY
"""Longest line either side reads: a delivery is at most ``MAX_BODY`` bytes of JSON, and
a metrics page is far less."""
START_SECONDS = 30.0
"""How long the child has to import, connect and listen before start-up fails."""
ASK_SECONDS = 2 * READY_TIMEOUT
"""How long the child waits for its parent's answer to a health question."""


class IngressConfig(BaseModel):
    """What the child needs, sent on its stdin."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listen: Listen
    bot: Bot
    bot_token: str
    """For bolt's client; neither bolt nor LAM's listeners call the Web API with it."""
    api_url: str
    log_format: str
    log_level: str


# -- the parent's side ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def ingress_process(
    front: SlackFront,
    health: Health,
    config: IngressConfig,
    *,
    lost: Callable[[str], None] | None = None,
    work_nice: int = 0,
) -> AsyncIterator[Ingress]:
    """Start the ingress process and do the work it hands over.

    Raises ``ConfigError`` when it cannot start (a port in use, Slack refusing the app
    token). Leaving the block stops it taking deliveries, and returns once every
    delivery it acknowledged has been received. ``lost`` is called (with why) if it ends
    on its own before then. Once it runs, this process lowers its CPU priority by
    ``work_nice``: on a busy CPU (a pod's one core) the ingress's acks then come before
    this process's work, instead of taking turns with it.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.slack.ingress",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=LINE_LIMIT,
    )
    assert process.stdin is not None and process.stdout is not None
    ingress = Ingress(process, front, health)
    process.stdin.write(config.model_dump_json().encode() + b"\n")
    reading = asyncio.create_task(ingress.read(), name="slack-ingress")
    try:
        await ingress.started()
        ingress.lost = lost
        if work_nice:
            lower_priority(work_nice)
        yield ingress
    finally:
        ingress.stopping = True
        with contextlib.suppress(ConnectionError):
            process.stdin.close()
        # The child stops listening, writes out what it acknowledged and exits: the
        # pipe's end is the last delivery.
        await reading
        await process.wait()


def lower_priority(by: int) -> None:
    """Lower the CPU priority (raise ``nice``) of every thread of this process by ``by``;
    threads started later inherit it. (Linux keeps a priority per thread: ``os.nice``
    alone would leave the threads already running, the store's among them, as they were.)
    """
    tasks = Path("/proc/self/task")
    threads = [int(tid.name) for tid in tasks.iterdir()] if tasks.is_dir() else [0]
    for thread in threads:
        with contextlib.suppress(OSError):  # A thread that has ended since.
            current = os.getpriority(os.PRIO_PROCESS, thread)
            os.setpriority(os.PRIO_PROCESS, thread, min(19, current + by))
    log.info("slack.work_priority_lowered", by=by)


class Ingress:
    """The parent's end of the pipe: deliveries to ``receive``, questions to ``health``."""

    def __init__(
        self, process: asyncio.subprocess.Process, front: SlackFront, health: Health
    ) -> None:
        self._process = process
        self._front = front
        self._health = health
        self._listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._answering: set[asyncio.Task[None]] = set()
        self._syncs = itertools.count()
        self._synced: dict[int, asyncio.Future[None]] = {}
        self.url = ""
        """The base URL of the child's HTTP server (events and health, or health alone)."""
        self.stopping = False
        self.lost: Callable[[str], None] | None = None
        self._ended = False
        """Whether the pipe from the child has ended: nothing more will arrive."""

    @property
    def pid(self) -> int:
        return self._process.pid

    async def started(self) -> None:
        try:
            async with asyncio.timeout(START_SECONDS):
                self.url = await asyncio.shield(self._listening)
        except TimeoutError:
            self._process.kill()
            raise ConfigError(
                f"the Slack ingress process did not start within {START_SECONDS:g}s"
            ) from None

    async def sync(self) -> None:
        """Return once every delivery the child acknowledged before now has been received
        (its work handed to ``front.background``); at once if the child has ended."""
        if self._ended:
            return
        number = next(self._syncs)
        synced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._synced[number] = synced
        try:
            if self._write({"sync": number}):
                await synced
        finally:
            self._synced.pop(number, None)

    def _write(self, message: Mapping[str, Any]) -> bool:
        stdin = self._process.stdin
        assert stdin is not None
        if stdin.is_closing():
            return False
        stdin.write(json.dumps(message).encode() + b"\n")
        return True

    async def read(self) -> None:
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                log.error("slack.ingress_garbled", line=line[:200].decode(errors="replace"))
                continue
            if isinstance(message, dict):
                self._take(message)
        self._ended = True
        await asyncio.gather(*self._answering)
        for synced in self._synced.values():
            if not synced.done():
                synced.set_result(None)
        code = await self._process.wait()
        if not self._listening.done():
            self._listening.set_exception(
                ConfigError(f"the Slack ingress process exited with code {code} at start")
            )
        elif self._listening.exception() is None and not self.stopping:
            why = f"the Slack ingress process exited on its own with code {code}"
            log.error("slack.ingress_lost", exit_code=code)
            if self.lost is not None:
                self.lost(why)

    def _take(self, message: Mapping[str, Any]) -> None:
        if isinstance(delivery := message.get("delivery"), dict):
            receive(self._front, delivery)
        elif isinstance(number := message.get("synced"), int):
            if (synced := self._synced.get(number)) is not None and not synced.done():
                synced.set_result(None)
        elif isinstance(url := message.get("listening"), str):
            if not self._listening.done():
                self._listening.set_result(url)
        elif isinstance(failed := message.get("failed"), str):
            if self._listening.done():
                log.error("slack.ingress_failed", error=failed)
            else:
                self._listening.set_exception(ConfigError(failed))
        elif isinstance(number := message.get("ask"), int):
            path, checks = message.get("path"), message.get("checks")
            task = asyncio.create_task(
                self._answer(number, str(path), checks if isinstance(checks, dict) else {})
            )
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _answer(self, number: int, path: str, checks: dict[str, str]) -> None:
        found = await answer(self._health, path, checks)
        reply = {
            "answer": number,
            "status": found.status,
            "content_type": found.content_type,
            "body": found.body.decode(),
        }
        self._write(reply)


# -- the child ------------------------------------------------------------------------------


class _Parent:
    """The child's end of the pipe."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._numbers = itertools.count()
        self._waiting: dict[int, asyncio.Future[Answer]] = {}

    def send(self, message: Mapping[str, Any]) -> None:
        # The transport buffers what the pipe cannot take yet: an ack never waits for
        # the parent.
        self._writer.write(json.dumps(message, ensure_ascii=False).encode() + b"\n")

    def hand_off(self, payload: dict[str, Any]) -> None:
        self.send({"delivery": payload})

    async def ask(self, path: str, checks: Mapping[str, str]) -> Answer:
        number = next(self._numbers)
        waiting: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[number] = waiting
        self.send({"ask": number, "path": path, "checks": dict(checks)})
        try:
            async with asyncio.timeout(ASK_SECONDS):
                return await waiting
        except TimeoutError:
            body = {"status": "unavailable", "checks": {"lam": "no answer from the work process"}}
            return Answer(503, "application/json", json.dumps(body).encode())
        finally:
            self._waiting.pop(number, None)

    async def answers(self) -> None:
        """Read the parent's answers until stdin ends: the parent's word to stop."""
        while line := await self._reader.readline():
            try:
                message = json.loads(line)
                if "sync" in message:
                    # Written after every delivery acknowledged before it was read.
                    self.send({"synced": int(message["sync"])})
                    continue
                found = Answer(
                    int(message["status"]),
                    str(message["content_type"]),
                    str(message["body"]).encode(),
                )
                waiting = self._waiting.get(int(message["answer"]))
            except (ValueError, KeyError, TypeError):
                log.error("slack.ingress_bad_answer", line=line[:200].decode(errors="replace"))
                continue
            if waiting is not None and not waiting.done():
                waiting.set_result(found)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


def health_routes(parent: _Parent, connection: SocketConnection | None) -> list[web.RouteDef]:
    """``/healthz`` answered here (this process is up); the rest by the parent."""

    async def endpoint(request: web.Request) -> web.Response:
        if request.path == "/healthz":
            return web.json_response({"status": "ok"})
        checks = {}
        if request.path == "/readyz" and connection is not None:
            checks["slack"] = await connection.check()
        return response(await parent.ask(request.path, checks))

    return [web.get(path, endpoint) for path in PATHS]


async def _run() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # A StreamReaderProtocol, unused for reading, is the protocol whose writer can wait
    # for the pipe to be flushed and closed.
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), sys.stdout
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    parent = _Parent(reader, writer)
    try:
        config = IngressConfig.model_validate_json(await reader.readline())
    except ValidationError as error:
        # Named by place only: the configuration holds secrets, and pydantic's message
        # would quote them.
        where = ", ".join(".".join(map(str, e["loc"])) or "(all)" for e in error.errors())
        parent.send({"failed": f"the Slack ingress process got a bad configuration: {where}"})
        await parent.close()
        return
    configure_logging(
        log_format=config.log_format,
        level=config.log_level,
        redactor=Redactor(
            [
                secret
                for secret in (
                    config.bot_token,
                    config.listen.signing_secret,
                    config.listen.app_token,
                )
                if secret
            ]
        ),
    )
    connection = SocketConnection() if config.listen.app_token is not None else None
    try:
        async with aiohttp.ClientSession() as session:
            client = AsyncWebClient(
                token=config.bot_token, base_url=config.api_url, session=session
            )
            app = build_app(client, config.bot, parent.hand_off)
            # What exists now lives as long as the process: out of the collector's view,
            # a full collection does not pause acks walking it (as ``lam serve`` does).
            gc.collect()
            gc.freeze()
            async with accepting(
                app,
                client,
                config.listen,
                health_routes(parent, connection),
                connection or SocketConnection(),
            ) as url:
                parent.send({"listening": url})
                await parent.answers()
    except LamError as error:
        parent.send({"failed": str(error)})
    except Exception as error:
        log.exception("slack.ingress_failed")
        parent.send({"failed": f"the Slack ingress process failed: {error}"})
    finally:
        await parent.close()


def main() -> None:
    # The parent decides when this process stops: by closing its stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncio.run(_run())


if __name__ == "__main__":
    main()
