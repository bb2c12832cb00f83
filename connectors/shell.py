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
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import structlog
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from bot.errors import ActionFailed, ConfigError, SandboxUnavailable
from bot.models import Risk
from connectors import _sandbox
from connectors.base import Action, ActionContext, ActionResult, Handler, Params

log = structlog.get_logger("lam.shell")

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
"""Runbook and parameter names: they become action ids, model fields and planner slots."""
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SLOT = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
TRUNCATED = "\n[output truncated at {limit} bytes]"
FAILURE_LINES = 5
KILL_GRACE = 0.5
"""Seconds kept from the executor's budget to kill, reap and report before it cancels."""

ParamType = Literal["string", "integer", "number", "boolean", "path"]
Scalar = str | int | float | bool
_PYTHON_TYPES: dict[ParamType, type] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "path": str,
}


class ParamSpec(BaseModel):
    """One typed runbook parameter; it becomes one field of the action's ``Params``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParamType = "string"
    description: str = ""
    default: Scalar | None = None
    required: bool | None = None
    """Defaults to true unless a ``default`` is given; an optional value left unset drops
    every argv element that mentions it (write ``--since={since}`` for optional flags)."""
    pattern: str | None = None
    """A regular expression the whole value must match (strings and paths)."""
    choices: list[Scalar] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    under: list[str] = Field(default_factory=list)
    """For paths: directories the resolved path must lie in, so ``../`` and symlinks
    cannot lead elsewhere. Required for ``type: path``."""
    allow_dash: bool = False
    """Let a value start with ``-``; off, because such a value is read as an option."""

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "path":
            if not self.under:
                raise ValueError("a path parameter needs 'under': the directories it may name")
            for directory in self.under:
                if not os.path.isabs(directory):
                    raise ValueError(f"'under' directory {directory!r} must be absolute")
        elif self.under:
            raise ValueError("'under' applies to path parameters only")
        if self.pattern is not None:
            if self.type not in ("string", "path"):
                raise ValueError("'pattern' applies to string and path parameters only")
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ValueError(
                    f"pattern {self.pattern!r} is not a valid regex: {error}"
                ) from None
        if (self.minimum is not None or self.maximum is not None) and self.type not in (
            "integer",
            "number",
        ):
            raise ValueError("'minimum' and 'maximum' apply to integer and number parameters only")
        if self.required and self.default is not None:
            raise ValueError("a parameter with a default cannot also be required")
        for value in [*(self.choices or ()), *([] if self.default is None else [self.default])]:
            try:
                TypeAdapter(self.annotation()).validate_python(value)
            except ValidationError as error:
                problem = error.errors()[0]["msg"]
                raise ValueError(f"{value!r} is not a valid {self.type}: {problem}") from None
        return self

    @property
    def is_required(self) -> bool:
        return self.default is None if self.required is None else self.required

    def annotation(self) -> Any:
        """The field's type: the Python type with this spec's checks attached."""
        return Annotated[_PYTHON_TYPES[self.type], AfterValidator(self._check)]

    def field(self) -> tuple[Any, Any]:
        """``(type, FieldInfo)`` for ``pydantic.create_model``."""
        extra: dict[str, Any] = {}
        if self.pattern is not None:
            extra["pattern"] = f"^(?:{self.pattern})$"
        if self.choices is not None:
            extra["enum"] = list(self.choices)
        info: dict[str, Any] = {
            "description": self.description or None,
            "json_schema_extra": extra or None,
            "ge": self.minimum,
            "le": self.maximum,
        }
        if self.type == "number":
            info["allow_inf_nan"] = False
        annotation = self.annotation()
        if self.is_required:
            return annotation, Field(**info)
        if self.default is None:
            return annotation | None, Field(default=None, **info)
        return annotation, Field(default=self.default, validate_default=True, **info)

    def _check(self, value: Any) -> Any:
        if isinstance(value, str) and any(unicodedata.category(c) == "Cc" for c in value):
            raise ValueError("must not contain NUL or other control characters")
        text = argv_text(value)
        if not isinstance(value, bool) and text.startswith("-") and not self.allow_dash:
            raise ValueError(
                f"must not start with '-': {text!r} would be read as an option"
                " (a runbook that means it sets allow_dash: true)"
            )
        if self.pattern is not None and re.fullmatch(self.pattern, text) is None:
            raise ValueError(f"must match the pattern {self.pattern!r} as a whole")
        if self.choices is not None and value not in self.choices:
            raise ValueError("must be one of " + ", ".join(repr(c) for c in self.choices))
        if self.type == "path":
            return self._resolve(text)
        return value

    def _resolve(self, path: str) -> str:
        if not os.path.isabs(path):
            raise ValueError(f"{path!r} must be an absolute path")
        real = os.path.realpath(path)
        for directory in self.under:
            allowed = os.path.realpath(directory)
            if os.path.commonpath([allowed, real]) == allowed:
                return real
        raise ValueError(f"{path!r} resolves to {real!r}, which is not under {self.under!r}")


class Runbook(BaseModel):
    """A named command with typed parameters, as lam.yaml declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str
    examples: list[str] = Field(default_factory=list)
    """Phrasings for the offline planner, with ``{param}`` slots."""
    argv: list[str] = Field(min_length=1)
    """The command; elements may hold ``{param}`` placeholders, never the program name."""
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    risk: Risk = "read"
    resource: str | None = None
    """The parameter that names the target, for resource-scoped policy rules."""
    timeout: float = Field(default=30.0, gt=0)
    supports_dry_run: bool = False
    """Dry-run runs ``dry_run_argv``, or without one only reports the argv it would run."""
    dry_run_argv: list[str] | None = Field(default=None, min_length=1)
    idempotent: bool = False
    read_paths: list[str] = Field(default_factory=list)
    """Host paths bound read-only into the sandbox (path parameters are bound anyway)."""

    @model_validator(mode="after")
    def _consistent(self) -> Runbook:
        for name in self.params:
            if not NAME.match(name):
                raise ValueError(f"parameter name {name!r} must match {NAME.pattern}")
            if name in dir(Params):
                raise ValueError(f"parameter name {name!r} is taken by pydantic; rename it")
        used: set[str] = set()
        for template in (self.argv, self.dry_run_argv or []):
            if template and placeholders(template[0]):
                raise ValueError(f"the program {template[0]!r} must not come from a parameter")
            for element in template:
                used |= placeholders(element)
        if unknown := used - set(self.params):
            raise ValueError(f"argv uses undeclared parameters: {sorted(unknown)}")
        if unused := set(self.params) - used:
            raise ValueError(f"parameters declared but not used in argv: {sorted(unused)}")
        if self.resource is not None and self.resource not in self.params:
            raise ValueError(f"resource {self.resource!r} is not one of the parameters")
        for example in self.examples:
            if unknown := set(SLOT.findall(example)) - set(self.params):
                raise ValueError(f"example {example!r} names undeclared slots {sorted(unknown)}")
        if self.dry_run_argv is not None and not self.supports_dry_run:
            raise ValueError("dry_run_argv is set but supports_dry_run is false")
        for path in self.read_paths:
            _sandbox.check_bindable(path)
        return self


def placeholders(element: str) -> set[str]:
    """The parameter names in one argv element; anything but ``{name}`` is refused."""
    try:
        parsed = list(string.Formatter().parse(element))
    except ValueError as error:
        raise ValueError(
            f"argv element {element!r}: {error} (write {{{{ and }}}} for literal braces)"
        ) from None
    names: set[str] = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not NAME.match(name) or spec or conversion:
            raise ValueError(
                f"argv element {element!r}: placeholders are plain parameter names like"
                " {path}; no positions, attributes, indexes, conversions or formats"
            )
        names.add(name)
    return names


def argv_text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(template: Sequence[str], values: Mapping[str, Scalar | None]) -> list[str]:
    """The argv: each element filled in on its own, dropped if it names an unset value."""
    argv: list[str] = []
    for element in template:
        parts: list[str] = []
        for literal, name, _, _ in string.Formatter().parse(element):
            parts.append(literal)
            if name is not None:
                value = values[name]
                if value is None:
                    break
                parts.append(argv_text(value))
        else:
            argv.append("".join(parts))
    return argv


def params_model(runbook_name: str, runbook: Runbook) -> type[Params]:
    """The runbook's ``Params``: the JSON schema the LLM sees, with the checks attached."""
    class_name = "".join(part.title() for part in runbook_name.split("_")) + "Params"
    fields: dict[str, Any] = {name: spec.field() for name, spec in runbook.params.items()}
    return create_model(
        class_name, __base__=Params, __doc__=runbook.description, __module__=__name__, **fields
    )


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
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
            )
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
