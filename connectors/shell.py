"""The ``shell`` connector: named runbooks with typed parameters, run sandboxed.

A runbook is an argv template, never a shell string: each ``{param}`` is replaced by one
validated value inside one argv element, so no value can add an argument, a pipe or a
command. Runbooks run under bubblewrap when it works here (``sandbox: auto``), with
resource limits, as ``nobody`` when LAM is root, with a scrubbed environment.

In lam.yaml::

    connectors:
      - type: shell
        name: shell
        settings:
          log_dirs: [/var/log, /srv/app/logs]
          runbooks:
            list_releases:
              description: The releases deployed on this host.
              examples: ["list releases", "list releases in {dir}"]
              argv: [ls, -la, "{dir}"]
              params:
                dir:
                  type: path
                  under: [/srv/app/releases]
                  default: /srv/app/releases
                  description: The releases directory, or one release in it.
              resource: dir
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shlex
import signal
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
)

from bot.errors import ActionFailed, ConfigError, SandboxUnavailable
from connectors import _sandbox
from connectors._registry import describe_validation_error
from connectors._runbook import NAME, ParamSpec, Runbook, Scalar, params_model, render
from connectors.base import Action, ActionContext, ActionResult, Handler

log = structlog.get_logger("lam.shell")

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TRUNCATED = "\n[output truncated at {limit} bytes]"
FAILURE_LINES = 5
KILL_GRACE = 0.5
"""Seconds kept from the executor's budget to kill, reap and report before it cancels."""


def builtin_runbooks(log_dirs: Sequence[str]) -> dict[str, Runbook]:
    """Harmless read-only runbooks every shell connector has unless told otherwise."""
    return {
        "disk_usage": Runbook(
            description="Disk space used and free (df -h), for the filesystem holding a path.",
            examples=[
                "disk usage",
                "show disk usage",
                "check disk space",
                "disk usage on {path}",
                "show disk usage on {path}",
                "how much disk space is left on {path}",
            ],
            # Pseudo filesystems are left out: in the sandbox they are its own, not the host's.
            argv=["df", "-h", "--exclude-type=tmpfs", "--exclude-type=devtmpfs", "{path}"],
            params={
                "path": ParamSpec(
                    type="path",
                    under=["/"],
                    required=False,
                    description="A directory whose filesystem to report, e.g. /var;"
                    " omit it for the filesystem holding the system",
                )
            },
            resource="path",
            timeout=15,
            supports_dry_run=True,
            idempotent=True,
        ),
        "uptime": Runbook(
            description="How long the machine has been up, and its load average.",
            examples=["uptime", "show uptime", "how long has the machine been up", "load average"],
            argv=["uptime"],
            timeout=15,
            supports_dry_run=True,
            idempotent=True,
        ),
        "processes": Runbook(
            description="Processes by CPU use (ps); in the sandbox, only the sandbox's own.",
            examples=["list processes", "show processes", "top processes", "what is running"],
            argv=["ps", "-eo", "pid,user,pcpu,pmem,etime,comm", "--sort=-pcpu"],
            timeout=15,
            supports_dry_run=True,
            idempotent=True,
        ),
        "tail_log": Runbook(
            description="The last lines of a log file.",
            examples=[
                "tail {path}",
                "tail {lines} lines of {path}",
                "show the last {lines} lines of {path}",
                "last {lines} lines of {path}",
            ],
            argv=["tail", "-n", "{lines}", "{path}"],
            params={
                "path": ParamSpec(
                    type="path",
                    under=list(log_dirs),
                    description="The log file, under " + ", ".join(log_dirs),
                ),
                "lines": ParamSpec(
                    type="integer",
                    default=50,
                    minimum=1,
                    maximum=10000,
                    description="How many lines from the end",
                ),
            },
            resource="path",
            timeout=15,
            supports_dry_run=True,
            idempotent=True,
            read_paths=list(log_dirs),
        ),
    }


class ShellSettings(BaseModel):
    """The ``settings`` of a shell connector in lam.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runbooks: dict[str, Runbook] = Field(default_factory=dict)
    """Declared runbooks; one named like a built-in replaces it."""
    include_builtin: bool = True
    log_dirs: list[str] = Field(default_factory=lambda: ["/var/log"])
    """Where the built-in ``tail_log`` may read."""
    sandbox: Literal["auto", "required", "off"] = "auto"
    """``auto`` sandboxes when bubblewrap works here; ``required`` refuses to run without
    it; ``off`` never sandboxes (for runbooks that must change the host)."""
    bwrap_path: str = "bwrap"
    run_as: str | int | None = None
    """User name or uid; by default ``nobody`` when LAM runs as root, else LAM's user."""
    output_limit_bytes: PositiveInt = 65536
    cpu_seconds: PositiveInt | None = 60
    memory_bytes: PositiveInt | None = 1024**3
    """Address-space limit (RLIMIT_AS)."""
    file_size_bytes: PositiveInt | None = 64 * 1024**2
    max_processes: PositiveInt | None = 256
    """RLIMIT_NPROC: counts every process of the runbook user, not only this runbook's."""
    tmp_size_bytes: PositiveInt = 64 * 1024**2
    """Size of the sandbox's private /tmp, which is memory the address-space limit misses."""
    env: dict[str, str] = Field(default_factory=dict)
    """Variables added to the scrubbed environment (PATH, LANG, HOME)."""

    @field_validator("runbooks")
    @classmethod
    def _runbook_names(cls, runbooks: dict[str, Runbook]) -> dict[str, Runbook]:
        for name in runbooks:
            if not NAME.match(name):
                raise ValueError(f"runbook name {name!r} must match {NAME.pattern}")
        return runbooks

    @field_validator("log_dirs")
    @classmethod
    def _bindable(cls, paths: list[str]) -> list[str]:
        for path in paths:
            _sandbox.check_bindable(path)
        return paths

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not ENV_NAME.match(name) or "\0" in value:
                raise ValueError(f"environment variable {name!r} has an invalid name or value")
        return env


class ShellConnector:
    """Runs the runbooks of its settings, one action ``<name>.<runbook>`` each."""

    type_name: ClassVar[str] = "shell"
    Settings: ClassVar[type[BaseModel]] = ShellSettings

    def __init__(self, name: str, settings: ShellSettings) -> None:
        self.name = name
        self.settings = settings
        builtin = builtin_runbooks(settings.log_dirs) if settings.include_builtin else {}
        self.runbooks: dict[str, Runbook] = {**builtin, **settings.runbooks}
        self._params = {rb: params_model(rb, runbook) for rb, runbook in self.runbooks.items()}
        self._identity = _identity(settings.run_as)
        self._env = {**_sandbox.BASE_ENV, **settings.env}
        self._limits = _sandbox.Limits(
            cpu_seconds=settings.cpu_seconds,
            memory_bytes=settings.memory_bytes,
            file_size_bytes=settings.file_size_bytes,
            processes=settings.max_processes,
        )
        self._warned_unsandboxed = False

    async def start(self, changed: Callable[[], None]) -> None:
        """Runbooks are declared, not discovered: nothing to connect to."""

    def actions(self) -> Sequence[Action]:
        return [
            Action(
                id=f"{self.name}.{rb}",
                description=runbook.description,
                params=self._params[rb],
                run=self._handler(rb),
                risk=runbook.risk,
                examples=tuple(runbook.examples),
                resource_param=runbook.resource,
                supports_dry_run=runbook.supports_dry_run,
                idempotent=runbook.idempotent,
                timeout=runbook.timeout,
            )
            for rb, runbook in self.runbooks.items()
        ]

    async def aclose(self) -> None:
        """Nothing outlives a call: every run kills and reaps its processes."""

    def _handler(self, runbook_name: str) -> Handler:
        async def run(params: BaseModel, ctx: ActionContext) -> ActionResult:
            return await self.run(runbook_name, params, ctx)

        return run

    async def run(self, runbook_name: str, params: BaseModel, ctx: ActionContext) -> ActionResult:
        """Run one runbook with validated ``params``; ``ActionFailed`` says why it did not."""
        runbook = self.runbooks[runbook_name]
        # Validated again right before running: a path checked at planning time may
        # since have been replaced by a symlink that leads elsewhere.
        try:
            checked = self._params[runbook_name].model_validate(params.model_dump())
        except ValidationError as error:
            problems = "; ".join(describe_validation_error(e) for e in error.errors())
            raise ActionFailed(
                f"runbook {runbook_name!r} was not run: its arguments are no longer valid: "
                + problems
            ) from None
        values: dict[str, Scalar | None] = {p: getattr(checked, p) for p in runbook.params}
        template = runbook.argv
        if ctx.dry_run:
            if not runbook.supports_dry_run:
                raise ActionFailed(f"runbook {runbook_name!r} has no dry-run mode; nothing was run")
            if runbook.dry_run_argv is None:
                planned = render(runbook.argv, values)
                return ActionResult(
                    output=f"dry run: would run {shlex.join(planned)}", data={"argv": planned}
                )
            template = runbook.dry_run_argv
        command = render(template, values)
        bwrap = await self._choose_bwrap(runbook_name)
        argv = command
        if bwrap is not None:
            paths = [v for p, v in values.items() if runbook.params[p].type == "path" and v]
            try:
                argv = _sandbox.bwrap_argv(
                    bwrap,
                    command,
                    env=self._env,
                    read_paths=[*runbook.read_paths, *map(str, paths)],
                    tmp_size_bytes=self.settings.tmp_size_bytes,
                )
            except ValueError as error:
                raise ActionFailed(f"runbook {runbook_name!r} was not run: {error}") from None
        argv = self._prlimit(runbook_name) + argv
        timeout = min(runbook.timeout, ctx.timeout - min(KILL_GRACE, ctx.timeout / 10))
        output = _sandbox.Output(limit=self.settings.output_limit_bytes)
        try:
            async with asyncio.timeout(timeout):
                exit_code = await _sandbox.run_contained(
                    argv, env=self._env, identity=self._identity, output=output
                )
        except TimeoutError:
            raise ActionFailed(
                f"runbook {runbook_name!r} timed out after {timeout:g}s and was killed"
                + _last_lines(output)
            ) from None
        except OSError as error:
            raise ActionFailed(
                f"runbook {runbook_name!r} could not start {command[0]!r}: {error}"
            ) from None
        if exit_code != 0:
            raise ActionFailed(
                f"runbook {runbook_name!r} {self._exit(exit_code, sandboxed=bwrap is not None)}"
                + _last_lines(output)
            )
        text = output.stdout_text()
        if output.truncated:
            text += TRUNCATED.format(limit=output.limit)
        if stderr := output.stderr_text().strip():
            text += "\n[stderr]\n" + stderr
        return ActionResult(
            output=text,
            data={"exit_code": 0, "truncated": output.truncated},
            sandboxed=bwrap is not None,
        )

    async def _choose_bwrap(self, runbook_name: str) -> str | None:
        """The bwrap to wrap this run in, ``None`` to run unsandboxed, or a refusal."""
        if self.settings.sandbox == "off":
            return None
        status = await _sandbox.probe_bwrap(self.settings.bwrap_path, self._identity)
        if status.bwrap is not None:
            return status.bwrap
        if self.settings.sandbox == "required":
            raise SandboxUnavailable(
                f"runbook {runbook_name!r} was not run: connector {self.name!r} requires the"
                f" sandbox, but {status.problem}; install bubblewrap or set sandbox: auto"
            )
        if not self._warned_unsandboxed:
            self._warned_unsandboxed = True
            log.warning("shell.unsandboxed", connector=self.name, problem=status.problem)
        return None

    def _prlimit(self, runbook_name: str) -> list[str]:
        limits = self._limits
        if all(
            limit is None
            for limit in (
                limits.cpu_seconds,
                limits.memory_bytes,
                limits.file_size_bytes,
                limits.processes,
            )
        ):
            return []
        prlimit = _sandbox.locate("prlimit")
        if prlimit is None:
            raise SandboxUnavailable(
                f"runbook {runbook_name!r} was not run: connector {self.name!r} sets resource"
                " limits, which need the 'prlimit' program (util-linux); install it or set"
                " cpu_seconds, memory_bytes, file_size_bytes and max_processes to null"
            )
        return _sandbox.prlimit_argv(prlimit, limits)

    def _exit(self, code: int, *, sandboxed: bool) -> str:
        """How a failed run ended, as the end of a sentence that starts with its name."""
        if code < 0:
            return f"was killed by {_signal_name(-code)}{self._limit_hint(-code)}"
        if sandboxed and 128 < code < 128 + signal.NSIG:
            # bwrap reports a command killed by signal N as exit code 128 + N.
            return (
                f"exited with code {code}, bwrap's way of saying it was killed by"
                f" {_signal_name(code - 128)}{self._limit_hint(code - 128)}"
            )
        return f"exited with code {code}"

    def _limit_hint(self, signum: int) -> str:
        if signum == signal.SIGXCPU:
            return f" (its CPU limit of {self.settings.cpu_seconds}s was reached)"
        if signum == signal.SIGXFSZ:
            return f" (it wrote a file past the limit of {self.settings.file_size_bytes} bytes)"
        return ""


def _last_lines(output: _sandbox.Output) -> str:
    """The end of stderr (or of stdout when stderr is empty), to explain a failure."""
    said = (output.stderr_text().strip() or output.stdout_text().strip()).splitlines()
    return ":\n" + "\n".join(said[-FAILURE_LINES:]) if said else ""


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _identity(run_as: str | int | None) -> _sandbox.Identity | None:
    """Whom runbooks run as; ``None`` to stay LAM's own user.

    Root is the default worth avoiding: bwrap started by root gives the sandboxed
    process root's access to whatever is bound into it.
    """
    euid = os.geteuid()
    if run_as is None:
        if euid != 0:
            return None
        run_as = "nobody"
    try:
        entry = pwd.getpwnam(run_as) if isinstance(run_as, str) else pwd.getpwuid(run_as)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if run_as == "nobody":
            uid = gid = 65534
        elif isinstance(run_as, int):
            uid = gid = run_as
        else:
            raise ConfigError(f"run_as user {run_as!r} does not exist on this machine") from None
    if uid == euid:
        return None
    if euid != 0:
        raise ConfigError(
            f"run_as {run_as!r} needs LAM to run as root to switch user; it runs as uid {euid}"
        )
    return _sandbox.Identity(uid=uid, gid=gid)
