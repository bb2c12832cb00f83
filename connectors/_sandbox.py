"""Running one argv contained: bubblewrap, resource limits, an unprivileged user.

The pieces, each on its own so the shell connector can combine them per settings:

- ``probe_bwrap`` finds out once whether bubblewrap works here, and why not if not.
- ``bwrap_argv`` wraps a command in a sandbox with no network, a private ``/tmp``, and
  read-only views of only what a program needs to start plus the paths it was given.
- ``prlimit_argv`` sets resource limits in the child by exec'ing util-linux ``prlimit``.
- ``run_contained`` spawns the command in its own session with a scrubbed environment,
  keeps at most a fixed number of bytes of its output, and kills its whole process
  group on timeout or cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

SANDBOX_TMP = "/tmp"  # noqa: S108 -- the sandbox's private tmpfs, never the host's /tmp

BASE_ENV: Mapping[str, str] = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": SANDBOX_TMP}
"""The whole environment of a runbook, before the variables its settings declare."""

TOP_LEVEL_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Mirrored as symlinks where the host has merged them into /usr, else bound read-only."""

ETC_FILES = (
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
)
"""The parts of /etc that programs need to start and to name users; never all of /etc."""

SANDBOX_MOUNTS = ("/proc", "/dev")
"""The sandbox's own synthetic mounts: a host path must not cover them or lie inside them."""

STDERR_TAIL_BYTES = 8192
"""Bytes of stderr kept, from the end: the lines that explain a failure come last."""

PROBE_TIMEOUT = 10.0
_CHUNK = 65536


@dataclass(frozen=True)
class Identity:
    """The unprivileged user a runbook runs as when LAM itself runs as root."""

    uid: int
    gid: int


@dataclass(frozen=True)
class Limits:
    """Resource limits set in the child; ``None`` leaves a limit as LAM's own."""

    cpu_seconds: int | None
    memory_bytes: int | None
    file_size_bytes: int | None
    processes: int | None


@dataclass(frozen=True)
class SandboxStatus:
    bwrap: str | None
    """Absolute path of a bubblewrap that works here; ``None`` when it does not."""
    problem: str = ""
    """Why bubblewrap cannot be used, as a sentence fragment for an error message."""


@dataclass
class Output:
    """What a command printed, bounded: filled while it runs, readable after a timeout."""

    limit: int
    """Bytes of stdout kept, from the start; the rest is read and dropped."""
    stdout: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    stderr: bytearray = field(default_factory=bytearray)
    """The last ``STDERR_TAIL_BYTES`` bytes of stderr: the lines that explain a failure."""

    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")


def check_bindable(path: str) -> None:
    """Refuse a host path that would cover the sandbox's root, /tmp, /proc or /dev."""
    if not os.path.isabs(path):
        raise ValueError(f"path {path!r} must be absolute to be shown inside the sandbox")
    normal = os.path.normpath(path)
    if normal in ("/", "//", SANDBOX_TMP):
        raise ValueError(
            f"path {path!r} cannot be shown inside the sandbox: it would cover the sandbox's"
            " own root or /tmp; name a directory below it instead"
        )
    for mount in SANDBOX_MOUNTS:
        if normal == mount or normal.startswith(mount + "/"):
            raise ValueError(
                f"path {path!r} cannot be shown inside the sandbox: {mount} there is the"
                " sandbox's own, not the host's"
            )


def bwrap_argv(
    bwrap: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    read_paths: Iterable[str] = (),
    tmp_size_bytes: int | None = None,
) -> list[str]:
    """``command`` wrapped in bubblewrap: no network, private /tmp, read-only host views.

    ``read_paths`` are bound read-only at the same place (missing ones are skipped, so
    the command reports them missing itself); each must pass ``check_bindable``.
    """
    argv = [
        bwrap,
        "--unshare-all",
        # Explicit so that --disable-userns is allowed: a process inside cannot make
        # a user namespace of its own, which closes the usual kernel attack surface.
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        # A new session stops the command from pushing input to LAM's terminal (TIOCSTI).
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
    ]
    for name, value in env.items():
        argv += ["--setenv", name, value]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in TOP_LEVEL_DIRS:
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for etc in ETC_FILES:
        argv += ["--ro-bind-try", etc, etc]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    if tmp_size_bytes is not None:
        argv += ["--size", str(tmp_size_bytes)]
    argv += ["--tmpfs", SANDBOX_TMP]
    # Parents before children, so a bound directory never hides a file bound inside it.
    for path in sorted({os.path.normpath(p) for p in read_paths}, key=lambda p: (p.count("/"), p)):
        check_bindable(path)
        argv += ["--ro-bind-try", path, path]
    argv += ["--chdir", SANDBOX_TMP, "--", *command]
    return argv


def prlimit_argv(prlimit: str, limits: Limits) -> list[str]:
    """The ``prlimit`` prefix that sets ``limits`` (soft = hard) and then execs the command.

    Limits are set by exec'ing ``prlimit`` rather than by a ``preexec_fn``: Python code
    between fork and exec is unsafe when other threads exist (aiosqlite and the default
    executor run threads in LAM), and a ``preexec_fn`` forces the slow fork path. A limit
    above LAM's own hard limit is lowered to it, since an unprivileged process cannot
    raise its hard limits.
    """
    argv = [prlimit]
    for option, value, which in (
        ("--cpu", limits.cpu_seconds, resource.RLIMIT_CPU),
        ("--as", limits.memory_bytes, resource.RLIMIT_AS),
        ("--fsize", limits.file_size_bytes, resource.RLIMIT_FSIZE),
        ("--nproc", limits.processes, resource.RLIMIT_NPROC),
    ):
        if value is None:
            continue
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        argv.append(f"{option}={value}")
    return [*argv, "--"]


_probed: dict[tuple[str, Identity | None], SandboxStatus] = {}


async def probe_bwrap(bwrap_path: str, identity: Identity | None) -> SandboxStatus:
    """Whether bubblewrap at ``bwrap_path`` can build the sandbox for ``identity``; cached.

    bwrap can be installed yet unusable (user namespaces disabled, a seccomp profile in a
    container), so it is tried once with the same options a runbook gets, running
    ``true``; its stderr says why when it fails. Two concurrent first calls may both
    probe; that is harmless, and cheaper than a lock bound to one event loop.
    """
    key = (bwrap_path, identity)
    if key not in _probed:
        _probed[key] = await _probe(bwrap_path, identity)
    return _probed[key]


def locate(program: str) -> str | None:
    """The absolute, symlink-free path of ``program`` as LAM's PATH finds it."""
    found = shutil.which(program)
    return None if found is None else os.path.realpath(found)


async def _probe(bwrap_path: str, identity: Identity | None) -> SandboxStatus:
    bwrap = locate(bwrap_path)
    if bwrap is None:
        return SandboxStatus(None, f"bubblewrap ({bwrap_path!r}) is not installed or not on PATH")
    argv = bwrap_argv(bwrap, ["true"], env=BASE_ENV, tmp_size_bytes=1024 * 1024)
    output = Output(limit=4096)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            exit_code = await run_contained(argv, env=BASE_ENV, identity=identity, output=output)
    except TimeoutError:
        return SandboxStatus(None, f"{bwrap} did not finish a trial run in {PROBE_TIMEOUT:g}s")
    except OSError as error:
        return SandboxStatus(None, f"{bwrap} could not be started: {error}")
    if exit_code != 0:
        said = output.stderr_text().strip() or output.stdout_text().strip() or "no output"
        return SandboxStatus(
            None,
            f"{bwrap} is installed but unusable here (a trial run exited with"
            f" {exit_code}: {said.splitlines()[-1]})",
        )
    return SandboxStatus(bwrap)


async def run_contained(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    identity: Identity | None,
    output: Output,
) -> int:
    """Run ``argv`` in a new session as ``identity`` and return its exit status.

    The status is negative when a signal killed the process, as in ``subprocess``. What
    it prints goes to ``output``. When it is done, its process group is killed. The
    caller bounds the time with ``asyncio.timeout``: on cancellation the process group
    is killed with SIGKILL and the process reaped before the cancellation goes on.
    Inside bubblewrap the pid namespace dies with bwrap, so grandchildren that left the
    group die too. Raises ``OSError`` when the program cannot be started.
    """
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitProtocol(loop),
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        # The unprivileged user may not be able to enter LAM's own working directory.
        cwd="/",
        start_new_session=True,
        user=None if identity is None else identity.uid,
        group=None if identity is None else identity.gid,
        # Without this the child keeps root's supplementary groups (and their file access).
        extra_groups=None if identity is None else [],
    )
    pid = transport.get_pid()
    assert protocol.stdout is not None and protocol.stderr is not None
    readers = (
        asyncio.create_task(_read_stdout(protocol.stdout, output)),
        asyncio.create_task(_read_stderr(protocol.stderr, output)),
    )
    try:
        # Shielded: cancelling a task cancels the future it awaits, and this one must
        # still learn of the exit so that the process is reaped before we return.
        await asyncio.shield(protocol.exited)
        # Whatever the command left running in its group would keep the pipes open
        # and outlive the action; it goes now, not at the timeout.
        _kill_group(pid)
        await asyncio.gather(*readers)
    finally:
        _kill_group(pid)
        try:
            await asyncio.shield(protocol.exited)
        finally:
            # Closing our ends of the pipes ends the readers even when a process that
            # escaped the group (possible only unsandboxed) still holds the other ends.
            transport.close()
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    exit_code = transport.get_returncode()
    assert exit_code is not None
    return exit_code


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Stream pipes plus a future for the moment the process itself exits.

    ``Process.wait()`` also waits until every pipe is closed, which a leftover child
    holding stdout can put off forever; the exit alone is what the kill must follow.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=_CHUNK, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set_result(None)


def _kill_group(pgid: int) -> None:
    # The group id stays reserved while any member lives, so this reaches only the
    # command and what it started; once the group is empty the call finds nothing.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _read_stdout(stream: asyncio.StreamReader, output: Output) -> None:
    # Reading on past the limit, and dropping, keeps the writer from blocking on a
    # full pipe, so a command that prints gigabytes still finishes (or times out).
    while chunk := await stream.read(_CHUNK):
        room = output.limit - len(output.stdout)
        if room > 0:
            output.stdout += chunk[:room]
        if len(chunk) > room:
            output.truncated = True


async def _read_stderr(stream: asyncio.StreamReader, output: Output) -> None:
    while chunk := await stream.read(_CHUNK):
        output.stderr += chunk
        if len(output.stderr) > STDERR_TAIL_BYTES:
            del output.stderr[:-STDERR_TAIL_BYTES]
