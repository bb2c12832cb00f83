"""Real ``lam`` processes: one-shot commands, and workers and Slack fronts on one Redis.

``run_lam`` runs a command to its end. ``LamProcesses`` starts long-running ones that share
a Redis, a key prefix, a policy and the shell runbooks below, and log JSON lines the tests
read; leaving it (it is a context manager) kills whatever still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from bot.config import Settings
from tests.support.policies import REPO, write_policy
from tests.support.waiting import eventually

LAM = [sys.executable, "-m", "bot.cli"]
COMMAND_TIMEOUT = 60.0
"""Seconds a one-shot ``lam`` command has to finish before the test fails."""

LEADS = [f"user:lead{n}" for n in range(100)]
SHELL_POLICY = (
    "g, user:alice, role:developer, *\n"
    "p, role:developer, staging, shell.*, *, run, allow\n"
    "p, role:developer, prod, shell.*, *, request, allow\n"
    "p, role:lead, prod, shell.*, *, approve, allow\n"
    + "".join(f"g, {lead}, role:lead, *\n" for lead in LEADS)
)
"""alice runs the runbooks in staging and asks for them in prod, where any lead approves."""


def runbooks(marker: str) -> str:
    """Quick, short, two-second and half-minute runbooks; the long sleeps carry ``marker``.

    The marker lets a test find a runbook's processes afterwards (see ``marked_processes``).
    """
    return f"""\
connectors:
  - type: shell
    name: shell
    settings:
      runbooks:
        quick:
          description: Say that it ran.
          argv: [echo, quick ran]
          risk: write
        pause:
          description: Take a moment.
          argv: [sleep, "0.3"]
          risk: write
        steady:
          description: Take two seconds.
          argv: [sleep, "2.{marker}"]
          risk: write
        slow:
          description: Take half a minute.
          argv: [sleep, "29.{marker}"]
          risk: write
          timeout: 60
"""


def run_lam(
    *args: str, env: Mapping[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``lam ARGS`` run to its end with exactly ``env``, its output captured as text."""
    return subprocess.run(
        [*LAM, *args],
        capture_output=True,
        text=True,
        env=dict(env),
        input=stdin,
        timeout=COMMAND_TIMEOUT,
        cwd=REPO,
    )


class LamProcesses:
    """``lam`` processes on one Redis and key prefix, with the runbooks above, logging JSON."""

    def __init__(
        self, tmp_path: Path, redis_url: str, prefix: str, *, policy: str = SHELL_POLICY
    ) -> None:
        self.tmp_path = tmp_path
        self.marker = f"{uuid.uuid4().int % 10**9:09d}"
        config = tmp_path / "lam.yaml"
        config.write_text(runbooks(self.marker), encoding="utf-8")
        policies = write_policy(tmp_path / "policies", policy)
        self.env = {
            "PATH": os.environ["PATH"],
            "LAM_HOME": str(tmp_path / "home"),
            "LAM_CONFIG": str(config),
            "LAM_POLICY_DIR": str(policies),
            "REDIS_URL": redis_url,
            "LAM_REDIS_PREFIX": prefix,
            "LAM_LOG_FORMAT": "json",
            "LAM_LOG_LEVEL": "info",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> LamProcesses:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.clean_up()

    def settings(self) -> Settings:
        """The settings the processes run with, for an engine of the test's own."""
        return Settings.model_validate(self.env)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``lam ARGS`` run to its end with these settings, ``env`` added or overriding."""
        return run_lam(*args, env={**self.env, **env})

    async def start(self, name: str, *args: str, ready: str, **env: str) -> subprocess.Popen[bytes]:
        """``lam ARGS`` with its output in ``NAME.log``, returned once it logged ``ready``."""
        log = self.log_path(name)
        process = self.spawn(log, args, env)

        def started() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited before {ready!r}: {log.read_text()}")
            return ready in self.events(name)

        await eventually(started, f"{name} to log {ready!r}")
        return process

    async def start_worker(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """``lam worker --name NAME ARGS``, returned once it has started working."""
        worker_args = ("worker", "--name", name, *args)
        return await self.start(name, *worker_args, ready="worker.started", **env)

    def spawn(
        self, log: Path, args: tuple[str, ...], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """``lam ARGS`` started with its output going to ``log``; not waited for."""
        with log.open("wb") as output:
            process = subprocess.Popen(
                [*LAM, *args],
                env={**self.env, **env},
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def start_script(self, script: str, *args: str) -> subprocess.Popen[bytes]:
        """A Python ``script`` run with these settings, its output piped back."""
        process = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.processes.append(process)
        return process

    def log_path(self, name: str) -> Path:
        return self.tmp_path / f"{name}.log"

    def events(self, name: str) -> list[str]:
        """The event names a process has logged so far, in order; every line must be JSON."""
        return [line["event"] for line in self.lines(name)]

    def lines(self, name: str) -> list[dict[str, Any]]:
        text = self.log_path(name).read_text(encoding="utf-8")
        # The last line may still be being written.
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines()]

    def marked_processes(self, program: str = "") -> list[int]:
        """Processes whose command line holds this test's marker (a runbook's sleep).

        With ``program``, only those running it (the sleep, not the bwrap around it).
        """
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and entry.name != str(os.getpid()):
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if self.marker.encode() in b" ".join(argv) and argv[0].startswith(program.encode()):
                    found.append(int(entry.name))
        return found

    def clean_up(self) -> None:
        """Kill every process still running, and the runbook processes they left behind."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for pid in self.marked_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
