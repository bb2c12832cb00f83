"""The mcp connector over stdio: mcp-server-git, the scripted FastMCP server as a
subprocess that crashes, restarts and hangs, servers that cannot start, and the engine."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from bot.errors import ActionFailed, InvalidArguments, RetryableError
from bot.models import Request
from connectors import Catalog, ConnectorConfig, start_connectors
from connectors._mcp_supervisor import StartFailed
from connectors.base import Connector
from connectors.mcp import McpConnector
from tests.conftest import EngineFactory
from tests.support.audit_trail import events_of
from tests.support.mcp_connector import (
    GIT_SERVER,
    SCRIPTED_SERVER,
    actions_of,
    mcp_connector,
    run_tool,
    started,
)
from tests.support.policies import write_policy


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit."""
    path = tmp_path / "repo"
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=Lam Test", "-c", "user.email=lam@test"]
    subprocess.run([*git, "init", "-q"], check=True)
    (path / "README").write_text("hello\n", encoding="utf-8")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first commit"], check=True)
    return path


def scripted(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """Settings for the scripted server as a subprocess, restarting quickly."""
    return {
        "command": [sys.executable, SCRIPTED_SERVER],
        "env": {
            "MCP_TEST_FAILURES_FILE": str(tmp_path / "failures"),
            "TOKEN": {"secret": "env:LAM_TEST_CANARY"},
        },
        "restart_delay": 0.05,
        "restart_delay_max": 0.2,
        **settings,
    }


# mcp-server-git over stdio


async def test_git_tools_become_actions_with_their_annotated_risk(repo: Path) -> None:
    """mcp-server-git's tools are actions whose risk follows its annotations, and they run."""
    async with started("git", command=[GIT_SERVER, "--repository", str(repo)]) as (git, _):
        assert isinstance(git, Connector)
        actions = actions_of(git)
        assert {"git.git_status", "git.git_log", "git.git_commit", "git.git_reset"} <= set(actions)
        hints = {
            tool: (actions[f"git.{tool}"].risk, actions[f"git.{tool}"].idempotent)
            for tool in ("git_status", "git_commit", "git_reset")
        }
        assert hints == {
            "git_status": ("read", True),
            "git_commit": ("write", False),
            "git_reset": ("destructive", True),
        }
        assert actions["git.git_log"].timeout == 60.0
        assert not actions["git.git_log"].supports_dry_run

        status = await run_tool(git, "git_status", repo_path=str(repo))
        assert "nothing to commit, working tree clean" in status.output
        log = await run_tool(git, "git_log", repo_path=str(repo), max_count=5)
        assert "Message: first commit" in log.output and "Author: Lam Test" in log.output


async def test_settings_select_tools_and_override_what_the_server_says(repo: Path) -> None:
    """include picks tools; overrides set risk, resource, examples, description and timeout."""
    overrides = {
        "git_commit": {"risk": "read", "idempotent": True},
        "git_log": {
            "risk": "destructive",
            "resource": "repo_path",
            "examples": ["git history of {repo_path}"],
            "description": "The commits of a repository.",
            "timeout": 5,
        },
    }
    async with started(
        "git",
        command=[GIT_SERVER, "--repository", str(repo)],
        tools={"include": ["git_log", "git_commit", "git_status"]},
        overrides=overrides,
    ) as (git, _):
        actions = actions_of(git)
        assert sorted(actions) == ["git.git_commit", "git.git_log", "git.git_status"]
        commit, log = actions["git.git_commit"], actions["git.git_log"]
        assert (commit.risk, commit.idempotent) == ("read", True)
        assert (log.risk, log.timeout, log.description) == (
            "destructive",
            5,
            "The commits of a repository.",
        )
        assert log.examples == ("git history of {repo_path}",)
        assert log.resource(log.params.model_validate({"repo_path": str(repo)})) == str(repo)


async def test_settings_naming_tools_the_server_lacks_fail_the_start(repo: Path) -> None:
    """A selection or override naming an unknown tool stops the start and lists what exists."""
    connector = mcp_connector(
        "git", command=[GIT_SERVER, "--repository", str(repo)], overrides={"git_stats": {}}
    )
    with pytest.raises(
        StartFailed,
        match="did not start: overrides names tools the server does not offer: git_stats;"
        " it offers: git_add, git_branch",
    ):
        await connector.start(lambda: None)
    await connector.aclose()


async def test_invalid_arguments_are_refused_before_any_call(repo: Path) -> None:
    """Wrong types, missing and unknown arguments are refused with the field named."""
    async with started("git", command=[GIT_SERVER, "--repository", str(repo)]) as (git, _):
        catalog = Catalog([git])
        for args, problem in [
            (
                {"repo_path": str(repo), "max_count": "many"},
                "max_count: Input should be a valid integer",
            ),
            ({}, "repo_path: Field required"),
            ({"repo_path": str(repo), "branch": "main"}, "branch: Extra inputs are not permitted"),
        ]:
            with pytest.raises(InvalidArguments, match=problem):
                catalog.validate("git.git_log", args)


# The scripted server as a subprocess over stdio


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_server_killed_mid_call_fails_the_call_then_comes_back(
    tmp_path: Path, mcp_canary: str
) -> None:
    """The call in flight fails naming the exit, calls fail fast while down, then work again."""
    async with started("proc", **scripted(tmp_path)) as (proc, back):
        first_pid = int((await run_tool(proc, "pid")).output)
        with pytest.raises(ActionFailed) as crashed:
            await run_tool(proc, "crash", say="segfault in frobnicator")
        assert type(crashed.value) is ActionFailed  # not retryable: crash is not idempotent
        assert str(crashed.value) == (
            "MCP server 'proc' exited: its process ended; its stderr ended with: segfault in"
            " frobnicator; whether tool 'crash' did its work is unknown; LAM is restarting it"
        )
        with pytest.raises(
            RetryableError, match="MCP server 'proc' is not available .*tool 'lookup' was not run"
        ):
            await run_tool(proc, "lookup", key="k")
        await asyncio.wait_for(back.wait(), 5)
        assert (await run_tool(proc, "lookup", key="k")).output == "value of k"
        assert int((await run_tool(proc, "pid")).output) != first_pid
        assert process_is_gone(first_pid)


async def test_restarts_back_off_exponentially_to_the_bound(
    tmp_path: Path, mcp_canary: str
) -> None:
    """A server that keeps failing to start is retried after 0.05, 0.1, 0.2, 0.2 s, then is back."""
    with structlog.testing.capture_logs() as logs:
        async with started("proc", **scripted(tmp_path)) as (proc, back):
            with pytest.raises(ActionFailed, match="exited"):
                await run_tool(proc, "crash", fail_next_starts=3)
            await asyncio.wait_for(back.wait(), 5)
            assert (await run_tool(proc, "lookup", key="k")).output == "value of k"
    down = [entry for entry in logs if entry["event"] == "mcp.server_down"]
    assert [entry["restart_in"] for entry in down] == [0.05, 0.1, 0.2, 0.2]
    assert "refusing to start: 3 failures left" in down[1]["reason"]
    assert any(entry["event"] == "mcp.server_back" for entry in logs)


async def test_closing_stops_the_server_and_fails_the_call_in_flight(
    tmp_path: Path, mcp_canary: str
) -> None:
    """aclose fails a call in flight with the reason, ends the process, and leaves no task."""
    tasks_before = asyncio.all_tasks()
    proc = mcp_connector("proc", **scripted(tmp_path))
    await proc.start(lambda: None)
    pid = int((await run_tool(proc, "pid")).output)
    hanging = asyncio.create_task(run_tool(proc, "hang"))
    # Tasks start in the order they were made: hang's request is written before pid's,
    # so once pid has its answer, hang is in flight on the server.
    await run_tool(proc, "pid")
    await proc.aclose()
    with pytest.raises(ActionFailed, match="MCP connector 'proc' was closed while tool 'hang' ran"):
        await hanging
    with pytest.raises(
        ActionFailed, match="MCP connector 'proc' is closed; tool 'lookup' was not run"
    ):
        await run_tool(proc, "lookup", key="k")
    assert process_is_gone(pid)
    assert asyncio.all_tasks() == tasks_before


async def test_a_canary_secret_never_leaves_the_connector(
    tmp_path: Path, mcp_canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret in env is masked in output, tool errors, crash reports and every log."""
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        async with started("proc", **scripted(tmp_path)) as (proc, back):
            assert (await run_tool(proc, "env", name="TOKEN")).output == "***"
            with pytest.raises(ActionFailed) as tool_error:
                await run_tool(proc, "fail_with_env", name="TOKEN")
            with pytest.raises(ActionFailed) as crash:
                await run_tool(proc, "crash", say_env="TOKEN")
            await asyncio.wait_for(back.wait(), 5)
    assert "reported an error: Error executing tool fail_with_env: ***" in str(tool_error.value)
    assert "its stderr ended with: env says ***" in str(crash.value)
    assert any(entry.get("line") == "env says ***" for entry in logs)
    assert mcp_canary not in repr(logs)
    assert mcp_canary not in caplog.text


# Start failures and the engine


async def test_instances_that_cannot_start_are_reported_while_others_work(
    repo: Path, tmp_path: Path
) -> None:
    """A missing command, a refused URL and a server that exits are named; git still works."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    exits = [sys.executable, "-c", "import sys; sys.exit('no config file at /etc/x.conf')"]
    configs = [
        ConnectorConfig(type="mcp", name="missing", settings={"command": [str(tmp_path / "nope")]}),
        ConnectorConfig(
            type="mcp", name="refused", settings={"url": f"http://127.0.0.1:{closed_port}/mcp"}
        ),
        ConnectorConfig(type="mcp", name="exits", settings={"command": exits}),
        ConnectorConfig(
            type="mcp", name="git", settings={"command": [GIT_SERVER, "--repository", str(repo)]}
        ),
    ]
    catalog = await start_connectors(configs, {"mcp": McpConnector})
    try:
        assert catalog.failures["missing"].endswith(
            f"did not start: cannot run {str(tmp_path / 'nope')!r}: No such file or directory"
        )
        assert "did not start: cannot reach it: ConnectError" in catalog.failures["refused"]
        assert catalog.failures["exits"].endswith(
            "did not start: its process ended; its stderr ended with: no config file at /etc/x.conf"
        )
        assert [c.name for c in catalog.connectors] == ["git"]
        assert "git.git_status" in catalog
    finally:
        for connector in catalog.connectors:
            await connector.aclose()


async def test_a_server_that_never_answers_fails_the_start_and_is_stopped(tmp_path: Path) -> None:
    """A server silent past connect_timeout fails the start with that reason and is killed."""
    pid_file = tmp_path / "pid"
    silent = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    connector = mcp_connector("silent", command=[sys.executable, "-c", silent], connect_timeout=1)
    with pytest.raises(StartFailed, match="did not start: it did not answer within 1s"):
        await connector.start(lambda: None)
    await connector.aclose()
    assert process_is_gone(int(pid_file.read_text()))


GIT_POLICY = """\
g, user:alice, role:developer, *
g, user:bob, role:lead, *
p, role:developer, staging, git.git_status, *, run, allow
p, role:developer, staging, git.*, *, request, allow
p, role:lead, staging, git.*, *, approve, allow
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_policy(tmp_path / "policies", GIT_POLICY)


@pytest.fixture
async def connector(repo: Path) -> AsyncIterator[McpConnector]:
    """The engine's connector: mcp-server-git on the test repository."""
    git = mcp_connector("git", command=[GIT_SERVER, "--repository", str(repo)])
    await git.start(lambda: None)
    yield git
    await git.aclose()


async def test_an_mcp_tool_runs_as_a_governed_audited_action(
    make_engine: EngineFactory, repo: Path
) -> None:
    """A read tool policy allows runs and is audited; a destructive one waits for approval."""
    engine = make_engine()
    ask = {"requester": "user:alice"}
    record = await engine.ask(
        Request.model_validate({"text": f"run git.git_status repo_path={repo} in staging", **ask})
    )
    assert record.state == "succeeded"
    assert "working tree clean" in (record.results[0].output or "")
    events = await events_of(engine, record.id)
    assert [e.kind for e in events][-3:] == ["step.started", "step.finished", "request.succeeded"]
    assert events[1].decisions[0].rule.startswith("p, role:developer, staging, git.git_status")

    reset = await engine.ask(
        Request.model_validate({"text": f"run git.git_reset repo_path={repo} in staging", **ask})
    )
    assert reset.state == "awaiting_approval"
    assert reset.plan is not None and reset.plan.steps[0].risk == "destructive"
    assert await engine.verify_audit() == len(events) + 3
