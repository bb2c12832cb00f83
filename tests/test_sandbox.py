"""The sandbox a runbook runs in: no network, no writes outside its /tmp, an unprivileged
user, a scrubbed environment, capped output, and nothing left running afterwards."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.errors import ActionFailed, SandboxUnavailable
from connectors import _sandbox
from connectors.base import ActionResult
from connectors.shell import ShellConnector, ShellSettings
from tests.support.actions import action_context as context

PYTHON = "/usr/bin/python3"

needs_python = pytest.mark.skipif(not os.path.exists(PYTHON), reason="needs /usr/bin/python3")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
GONE_WITHIN = 10.0
"""Seconds a killed process may take to be gone; it is waited for on its pidfd."""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="LAM drops privileges only as root")

CONNECT = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("connected")
except OSError:
    print("blocked")
"""

WRITE = """
import sys
try:
    with open(sys.argv[1], "w") as f:
        f.write("changed")
    print("written")
except OSError as error:
    print("refused", type(error).__name__)
"""

GRANDCHILD = """
import subprocess, sys, time
subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(1000)", sys.argv[1]],
    start_new_session=sys.argv[2] == "new-session",
)
print("grandchild started", flush=True)
if sys.argv[3] == "hang":
    time.sleep(1000)
"""


def make(runbooks: dict[str, Any], **settings: Any) -> ShellConnector:
    declared = {name: {"description": "A test runbook.", **rb} for name, rb in runbooks.items()}
    return ShellConnector(
        "shell",
        ShellSettings.model_validate({"runbooks": declared, "include_builtin": False, **settings}),
    )


async def run(
    connector: ShellConnector, runbook: str, *, budget: float = 30.0, **args: Any
) -> ActionResult:
    """Run like the executor does, which allows ``budget`` seconds for the attempt."""
    action = {a.id: a for a in connector.actions()}[f"shell.{runbook}"]
    return await action.run(action.params.model_validate(args), context(timeout=budget))


def python(script: str, *args: str) -> dict[str, Any]:
    return {"argv": ["python3", "-c", script, *args]}


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (a zombie's is empty)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


async def wait_until_gone(pids: list[int]) -> None:
    """Wait for each process to exit, on its pidfd, which becomes readable when it does."""
    loop = asyncio.get_running_loop()
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        gone = loop.create_future()
        loop.add_reader(pidfd, _settle, gone)
        try:
            async with asyncio.timeout(GONE_WITHIN):
                await gone
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def exists(path: Path) -> bool:
    return path.exists()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A host directory anyone may write to, holding a file anyone may overwrite."""
    directory = Path(tempfile.mkdtemp(prefix="lam-shared-"))
    directory.chmod(0o777)
    target = directory / "target"
    target.write_text("original", encoding="utf-8")
    target.chmod(0o666)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def host_marker() -> Iterator[Path]:
    """A path in the host's /tmp that a runbook would create if it ran unsandboxed."""
    path = Path(tempfile.gettempdir()) / f"lam-ran-{uuid.uuid4().hex}"
    yield path
    path.unlink(missing_ok=True)


# The bwrap command line


def test_bwrap_argv_binds_only_what_programs_need() -> None:
    """The sandbox unshares everything and binds /usr and a few /etc files, never / or /etc."""
    argv = _sandbox.bwrap_argv(
        "/usr/bin/bwrap", ["df", "-h"], env={"PATH": "/usr/bin"}, read_paths=["/var/log"]
    )
    assert argv[0] == "/usr/bin/bwrap"
    assert argv[argv.index("--") + 1 :] == ["df", "-h"]
    options = argv[: argv.index("--")]
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in options
    assert "--share-net" not in options and "--bind" not in options
    pairs = {(options[i], options[i + 1]) for i in range(len(options) - 1)}
    assert {
        ("--proc", "/proc"),
        ("--dev", "/dev"),
        ("--tmpfs", "/tmp"),
        ("--chdir", "/tmp"),
    } <= pairs
    sources = [options[i + 1] for i, o in enumerate(options) if o in ("--ro-bind", "--ro-bind-try")]
    assert "/usr" in sources and "/etc/passwd" in sources and "/var/log" in sources
    assert "/" not in sources and "/etc" not in sources
    assert options[options.index("--setenv") :][:3] == ["--setenv", "PATH", "/usr/bin"]


@pytest.mark.parametrize("path", ["/", "/tmp", "/proc", "/proc/1/root", "/dev", "/dev/sda", "x"])
def test_paths_that_would_cover_the_sandbox_are_not_bindable(path: str) -> None:
    """A host path over the sandbox's root, /tmp, /proc or /dev, or a relative one, is refused."""
    with pytest.raises(ValueError, match=r"absolute|cannot be shown"):
        _sandbox.check_bindable(path)


def test_prlimit_argv_sets_each_limit_given() -> None:
    """Each configured limit becomes one prlimit option; unset limits are left out."""
    argv = _sandbox.prlimit_argv(
        "/usr/bin/prlimit",
        _sandbox.Limits(cpu_seconds=5, memory_bytes=None, file_size_bytes=1000, processes=None),
    )
    assert argv == ["/usr/bin/prlimit", "--cpu=5", "--fsize=1000", "--"]


# Detecting bubblewrap


async def test_probe_reports_a_missing_bwrap() -> None:
    """A bwrap that is not installed is reported as unavailable, saying so."""
    status = await _sandbox.probe_bwrap("/nonexistent/bwrap", None)
    assert status.bwrap is None
    assert "not installed" in status.problem


async def test_probe_reports_a_bwrap_that_cannot_build_the_sandbox(tmp_path: Path) -> None:
    """A bwrap that is present but fails its trial run is unavailable, with its stderr."""
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n",
        encoding="utf-8",
    )
    fake.chmod(0o755)
    status = await _sandbox.probe_bwrap(str(fake), None)
    assert status.bwrap is None
    assert "installed but unusable" in status.problem
    assert "exited with 1: bwrap: No permissions to create new namespace" in status.problem


async def test_sandbox_required_without_bwrap_refuses_and_runs_nothing(host_marker: Path) -> None:
    """sandbox: required with no usable bwrap raises SandboxUnavailable and runs nothing."""
    connector = make(
        {"touch": {"argv": ["touch", str(host_marker)]}},
        sandbox="required",
        bwrap_path="/nonexistent/bwrap",
    )
    with pytest.raises(SandboxUnavailable, match="requires the sandbox, but bubblewrap"):
        await run(connector, "touch")
    assert not exists(host_marker)


async def test_sandbox_auto_without_bwrap_runs_unsandboxed_and_says_so(host_marker: Path) -> None:
    """sandbox: auto with no usable bwrap runs the runbook and reports sandboxed=False."""
    connector = make(
        {"touch": {"argv": ["touch", str(host_marker)]}}, bwrap_path="/nonexistent/bwrap"
    )
    result = await run(connector, "touch")
    assert result.sandboxed is False
    assert exists(host_marker)


async def test_sandbox_off_runs_unsandboxed_and_says_so() -> None:
    """sandbox: off runs the runbook directly and reports sandboxed=False."""
    result = await run(make({"echo": {"argv": ["echo", "hi"]}}, sandbox="off"), "echo")
    assert (result.output, result.sandboxed) == ("hi\n", False)


@pytest.mark.sandbox
@needs_bwrap
async def test_path_values_are_bound_into_the_sandbox_but_never_over_it() -> None:
    """A path argument is visible inside the sandbox; '/' is refused rather than bound."""
    connector = make({}, include_builtin=True)
    assert "/usr" in (await run(connector, "disk_usage", path="/usr")).output
    with pytest.raises(ActionFailed, match="'disk_usage' was not run: path '/' cannot be shown"):
        await run(connector, "disk_usage", path="/")


# What the sandbox prevents


@pytest.mark.sandbox
@needs_bwrap
@needs_python
async def test_sandboxed_runbook_cannot_reach_the_network() -> None:
    """A connection to a port listening on the host's loopback fails inside the sandbox."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = str(server.getsockname()[1])
        runbook = {"connect": python(CONNECT, port)}
        assert (await run(make(runbook), "connect")).output == "blocked\n"
        # The same runbook outside the sandbox connects: the refusal is the sandbox's doing.
        assert (await run(make(runbook, sandbox="off"), "connect")).output == "connected\n"


@pytest.mark.sandbox
@needs_bwrap
@needs_python
async def test_sandboxed_runbook_cannot_write_outside_its_tmp(shared_dir: Path) -> None:
    """A host file stays unchanged whether its directory is bound read-only or not bound."""
    target = str(shared_dir / "target")
    bound = make({"write": {**python(WRITE, target), "read_paths": [str(shared_dir)]}})
    assert (await run(bound, "write")).output == "refused OSError\n"
    unbound = make({"write": python(WRITE, target)})
    assert (await run(unbound, "write")).output == "refused FileNotFoundError\n"
    assert (shared_dir / "target").read_text(encoding="utf-8") == "original"
    # Outside the sandbox the same user may write it: the refusal is the sandbox's doing.
    assert (await run(make({"write": python(WRITE, target)}, sandbox="off"), "write")).output == (
        "written\n"
    )


@pytest.mark.sandbox
@needs_bwrap
@needs_python
async def test_sandbox_tmp_is_writable_and_private(host_marker: Path) -> None:
    """The sandbox's /tmp takes writes, which never reach the host's /tmp."""
    result = await run(make({"write": python(WRITE, str(host_marker))}), "write")
    assert result.output == "written\n"
    assert not exists(host_marker)


@pytest.mark.sandbox
@needs_bwrap
@needs_root
async def test_runbooks_run_as_nobody_when_lam_is_root() -> None:
    """Run by root, a runbook runs as uid 65534 with no supplementary groups, in or out."""
    runbook = {"id": {"argv": ["id", "-u"]}, "groups": {"argv": ["id", "-G"]}}
    for sandbox in ("auto", "off"):
        connector = make(runbook, sandbox=sandbox)
        assert (await run(connector, "id")).output == "65534\n"
        assert (await run(connector, "groups")).output == "65534\n"


@pytest.mark.sandbox
@needs_bwrap
@pytest.mark.parametrize("sandbox", ["auto", "off"])
async def test_environment_is_scrubbed(sandbox: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """LAM's own variables never reach a runbook; only the base and declared ones do."""
    monkeypatch.setenv("LAM_CANARY_SECRET", "do-not-leak")
    connector = make({"env": {"argv": ["env"]}}, sandbox=sandbox, env={"APP_MODE": "ops"})
    result = await run(connector, "env")
    variables = dict(line.split("=", 1) for line in result.output.splitlines())
    assert "do-not-leak" not in result.output
    assert variables["PATH"] == "/usr/bin:/bin"
    assert variables["LANG"] == "C.UTF-8"
    assert variables["HOME"] == "/tmp"
    assert variables["APP_MODE"] == "ops"
    # bwrap sets PWD for the directory it starts the command in.
    assert set(variables) <= {"PATH", "LANG", "HOME", "APP_MODE", "PWD"}


# Time and output bounds


@needs_python
@pytest.mark.parametrize(
    ("sandbox", "grandchild"),
    [
        pytest.param("auto", "new-session", marks=[pytest.mark.sandbox, needs_bwrap]),
        ("off", "same-group"),
    ],
)
async def test_timeout_kills_the_runbook_and_its_grandchildren(
    sandbox: str, grandchild: str
) -> None:
    """On timeout the whole process tree is killed, and the failure says so."""
    marker = f"lam-marker-{uuid.uuid4().hex}"
    connector = make(
        {"hang": {**python(GRANDCHILD, marker, grandchild, "hang"), "timeout": 2}},
        sandbox=sandbox,
    )
    with pytest.raises(ActionFailed, match="timed out after 2s and was killed") as failure:
        await run(connector, "hang")
    # The grandchild had started: the output before the kill says so.
    assert "grandchild started" in str(failure.value)
    await wait_until_gone(processes_with(marker))
    assert processes_with(marker) == []


@needs_python
@pytest.mark.parametrize(
    ("sandbox", "grandchild"),
    [
        pytest.param("auto", "new-session", marks=[pytest.mark.sandbox, needs_bwrap]),
        ("off", "same-group"),
    ],
)
async def test_cancellation_kills_the_runbook_and_its_grandchildren(
    sandbox: str, grandchild: str
) -> None:
    """When the executor's own timeout cancels the call, the process tree is killed too."""
    marker = f"lam-marker-{uuid.uuid4().hex}"
    connector = make(
        {"hang": {**python(GRANDCHILD, marker, grandchild, "hang"), "timeout": 600}},
        sandbox=sandbox,
    )
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(2):
            await run(connector, "hang")
    await wait_until_gone(processes_with(marker))
    assert processes_with(marker) == []


@needs_python
@pytest.mark.parametrize(
    ("sandbox", "grandchild"),
    [
        pytest.param("auto", "new-session", marks=[pytest.mark.sandbox, needs_bwrap]),
        ("off", "same-group"),
    ],
)
async def test_nothing_outlives_a_finished_runbook(sandbox: str, grandchild: str) -> None:
    """A background child a runbook leaves behind is killed when the runbook exits."""
    marker = f"lam-marker-{uuid.uuid4().hex}"
    connector = make({"leave": python(GRANDCHILD, marker, grandchild, "exit")}, sandbox=sandbox)
    assert (await run(connector, "leave")).output == "grandchild started\n"
    await wait_until_gone(processes_with(marker))
    assert processes_with(marker) == []


async def test_the_executors_budget_bounds_a_longer_runbook_timeout() -> None:
    """A runbook stops before the executor's timeout even when its own is longer."""
    connector = make({"nap": {"argv": ["sleep", "1000"], "timeout": 600}}, sandbox="off")
    with pytest.raises(ActionFailed, match=r"'nap' timed out after 1\.8s and was killed"):
        await run(connector, "nap", budget=2)


@pytest.mark.parametrize(
    "sandbox", [pytest.param("auto", marks=[pytest.mark.sandbox, needs_bwrap]), "off"]
)
async def test_output_is_capped_and_marked(sandbox: str) -> None:
    """Output past output_limit_bytes is dropped, the run still finishes, and it is marked."""
    connector = make(
        {"flood": {"argv": ["seq", "1", "3000000"]}}, sandbox=sandbox, output_limit_bytes=1000
    )
    result = await run(connector, "flood")
    kept, mark = result.output.split("\n[output truncated", 1)
    assert kept.startswith("1\n2\n3\n") and len(kept.encode()) <= 1000
    assert mark == " at 1000 bytes]"
    assert result.data == {"exit_code": 0, "truncated": True}
