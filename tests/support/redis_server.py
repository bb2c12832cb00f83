"""Private ``redis-server`` processes for the tests, never the shared Redis on port 6379.

A pytest plugin: a test module loads it with ``pytest_plugins = ("tests.support.redis_server",)``.
One server serves the whole session, started the first time a test needs it; each test
gets its own key prefix on it, so tests never see each other's keys. Fault tests take a
``private_redis`` of their own, which they may stop, kill and restart at will.

Test modules import ``redis_store`` from here before pytest registers the module as a
plugin, too late for assertion rewriting: PYTEST_DONT_REWRITE says so, and keeps pytest
from warning about it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.store.redis import RedisStore

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
START_DEADLINE = 10.0
"""Seconds a server has to answer PING (or to exit, when stopped) before the test fails."""
POLL_INTERVAL = 0.005
"""How long to wait on the process between two PINGs; returns at once if it exits."""


class RedisServer:
    """One ``redis-server`` on 127.0.0.1 with its own directory; its port survives restarts."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.directory = directory
        self.password = password
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the redis-server has not been started yet")
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and return once it answers PING; on its old port after a stop."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.port is not None:
            self._launch(self.port)
            return
        # A free port can be taken between choosing and binding it: choose again then.
        for _ in range(5):
            port = free_port()
            try:
                self._launch(port)
            except PortTaken:
                continue
            self.port = port
            return
        raise RuntimeError("redis-server found no free port in five tries")

    def stop(self, *, keep_data: bool = False) -> None:
        """Shut the server down; with ``keep_data`` its keys are saved and load on restart."""
        if not self.running:
            return
        assert self._process is not None and self.port is not None
        if keep_data:
            self.command("SHUTDOWN", "SAVE")
        else:
            (self.directory / "dump.rdb").unlink(missing_ok=True)
            self._process.send_signal(signal.SIGTERM)
        self._process.wait(timeout=START_DEADLINE)
        self._process = None

    def kill(self) -> None:
        """Kill the server at once, as a crash would: keys since the last ``save`` are lost."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=START_DEADLINE)
            self._process = None

    def save(self) -> None:
        """Snapshot the keys to disk now; a later start (after ``kill``, too) loads them."""
        reply = self.command("SAVE")
        if reply != b"+OK":
            raise RuntimeError(f"SAVE failed: {reply!r}")

    def restart(self, *, keep_data: bool = True) -> None:
        """Stop and start again on the same port; clients holding connections must reconnect."""
        self.stop(keep_data=keep_data)
        self.start()

    def command(self, *args: str) -> bytes:
        """Send one command and return its raw reply: ``b"+PONG"``, or a bulk string's bytes."""
        assert self.port is not None
        return _command(self.port, self.password, *args)

    def _launch(self, port: int) -> None:
        arguments = [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.password is not None:
            arguments += ["--requirepass", self.password]
        with (self.directory / "redis.out").open("ab") as output:
            process = subprocess.Popen(
                arguments, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                # The pid tells this server from another process that took the port first.
                if _command(port, self.password, "PING") == b"+PONG" and (
                    f"process_id:{process.pid}\r\n".encode()
                    in _command(port, self.password, "INFO", "server")
                ):
                    self._process = process
                    return
            try:
                process.wait(timeout=POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                continue
            log = self._log_tail()
            if "Address already in use" in log:
                raise PortTaken(port)
            raise RuntimeError(f"redis-server exited with {process.returncode}: {log}")
        process.kill()
        process.wait()
        raise RuntimeError(f"redis-server did not answer PING within {START_DEADLINE}s")

    def _log_tail(self) -> str:
        paths = (self.directory / "redis.out", self.directory / "redis.log")
        text = "".join(path.read_text(errors="replace") for path in paths if path.exists())
        return text[-2000:]


class PortTaken(Exception):
    """Another process bound the chosen port first."""


def free_port() -> int:
    """A port nobody listens on right now; another process may still take it first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _command(port: int, password: str | None, *args: str) -> bytes:
    """One command on a fresh connection (after AUTH); the reply of the last one.

    A status, error or integer reply comes back as its line (``b"+PONG"``), a bulk string
    as its content, a closed connection (``SHUTDOWN``) as ``b""``.
    """
    commands = ([("AUTH", password)] if password is not None else []) + [args]
    payload = b"".join(
        f"*{len(command)}\r\n".encode()
        + b"".join(f"${len(part.encode())}\r\n{part}\r\n".encode() for part in command)
        for command in commands
    )
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as connection:
        connection.sendall(payload)
        replies = connection.makefile("rb")
        reply = b""
        for _ in commands:
            reply = replies.readline().rstrip(b"\r\n")
            if reply.startswith(b"$") and reply != b"$-1":
                reply = replies.read(int(reply[1:]) + 2)[:-2]
        return reply


_session: RedisServer | None = None


def session_server() -> RedisServer:
    """The session's shared server: started on first use, and again if a test stopped it."""
    global _session
    if _session is None:
        _session = RedisServer(Path(tempfile.mkdtemp(prefix="lam-redis-")))
        atexit.register(_stop_session)
    _session.start()
    return _session


def _stop_session() -> None:
    global _session
    if _session is not None:
        _session.kill()
        shutil.rmtree(_session.directory, ignore_errors=True)
        _session = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _stop_session()


def prefix_for(location: Path) -> str:
    """The key prefix of the store kept at ``location``: the same place, the same keys."""
    return f"lam-test:{hashlib.sha256(str(location).encode()).hexdigest()[:16]}:"


@asynccontextmanager
async def redis_store(location: Path) -> AsyncIterator[RedisStore]:
    """A ``RedisStore`` on the session server, under the key prefix of ``location``."""
    store = await RedisStore.open(session_server().url, prefix=prefix_for(location))
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The session's shared server; stop it only through ``private_redis`` instead."""
    return session_server()


@pytest.fixture
def redis_url() -> str:
    """The URL of the session server, running."""
    return session_server().url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"lam-test:{uuid.uuid4().hex[:16]}:"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, to stop, kill or restart; gone when the test ends."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the session server, to look at keys and to tamper with them."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
