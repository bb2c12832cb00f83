"""``lam serve`` as a real subprocess, for the tests that need the whole command.

``lam_serve(env)`` starts ``python -m bot.cli serve`` on a free port of 127.0.0.1 with
only the given LAM and Slack settings (nothing leaks in from the caller's environment),
logging JSON lines to stderr. It waits for the ``slack.serving`` line, so the server is
listening when the block starts; ``wait_for_log`` waits for any other line. Leaving the
block kills the process if it is still running.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The waits take a ``timeout`` so that, when it expires, the failure shows the log lines.
# ruff: noqa: ASYNC109

START_TIMEOUT = 60.0
"""Seconds ``lam serve`` has to start listening: a cold interpreter imports a lot."""
REPO = Path(__file__).resolve().parents[2]
FOREIGN = ("SLACK_", "LAM_", "REDIS_", "OPENAI_")
"""Variables of the caller's environment that would change what the process does."""


@dataclass
class ServeProcess:
    """A running ``lam serve`` and the log lines it has written so far."""

    process: asyncio.subprocess.Process
    url: str = ""
    """``http://127.0.0.1:PORT``: Slack's events over HTTP, health in Socket Mode."""
    logs: list[dict[str, Any]] = field(default_factory=list)
    ended: bool = False
    """Whether stderr is closed: every line the process wrote is in ``logs``."""
    _logged: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for_log(self, event: str, *, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """The first log line of ``event``, written or still to come."""

        def found() -> dict[str, Any] | None:
            return next((line for line in self.logs if line.get("event") == event), None)

        async with self._logged:
            try:
                async with asyncio.timeout(timeout):
                    while (line := found()) is None:
                        if self.ended:
                            raise AssertionError(f"lam serve exited: {self._tail()}")
                        await self._logged.wait()
            except TimeoutError:
                raise AssertionError(f"no {event!r} within {timeout}s: {self._tail()}") from None
        return line

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            text = raw.decode(errors="replace").strip()
            try:
                line = json.loads(text)
            except ValueError:
                line = {"event": "(not json)", "text": text}
            async with self._logged:
                self.logs.append(line if isinstance(line, dict) else {"event": str(line)})
                self._logged.notify_all()
        async with self._logged:
            self.ended = True
            self._logged.notify_all()

    def _tail(self) -> str:
        return "\n".join(json.dumps(line) for line in self.logs[-20:])


@asynccontextmanager
async def lam_serve(env: Mapping[str, str], *args: str) -> AsyncIterator[ServeProcess]:
    """``lam serve --port 0 --host 127.0.0.1 ARGS`` with ``env``; listening when it yields."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "serve",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        *args,
        cwd=REPO,
        env={**clean, "LAM_LOG_FORMAT": "json", "LAM_LOG_LEVEL": "info", **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    serving = ServeProcess(process)
    reader = asyncio.create_task(serving._read())
    try:
        serving.url = str((await serving.wait_for_log("slack.serving"))["url"])
        yield serving
    finally:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.kill()
        await process.wait()
        await reader
