"""The mcp connector against real MCP servers: mcp-server-git over stdio, and a scripted
FastMCP server over streamable HTTP (in process) and over stdio (as a subprocess)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog
from mcp import types
from pydantic import ValidationError

from bot.errors import ActionFailed, ConfigError, InvalidArguments, RetryableError
from bot.models import Request
from connectors import Catalog, ConnectorConfig, check_connectors, start_connectors
from connectors._mcp_schema import params_model
from connectors._mcp_supervisor import Backoff, StartFailed
from connectors._mcp_tools import action_name, build_actions
from connectors.base import Action, ActionResult, Connector
from connectors.mcp import McpConnector, McpSettings
from connectors.secrets import secret_values
from tests.conftest import EngineFactory, write_policy
from tests.support.actions import action_context
from tests.support.mcp_server import PNG_BYTES, ServerState, build_server, serve_http

GIT_SERVER = str(Path(sys.executable).parent / "mcp-server-git")
SCRIPTED_SERVER = str(Path(__file__).parent / "support" / "mcp_server.py")
CANARY = "canary-7f3a9c1e-do-not-leak"


def make(name: str, **settings: Any) -> McpConnector:
    return McpConnector(name, McpSettings.model_validate(settings))


@asynccontextmanager
async def started(name: str, **settings: Any) -> AsyncIterator[tuple[McpConnector, asyncio.Event]]:
    """A started connector and an event set each time it reports changed actions."""
    changed = asyncio.Event()
    connector = make(name, **settings)
    await connector.start(changed.set)
    try:
        yield connector, changed
    finally:
        await connector.aclose()


async def run(connector: McpConnector, tool: str, **args: Any) -> ActionResult:
    action = {a.id: a for a in connector.actions()}[f"{connector.name}.{tool}"]
    params = action.params.model_validate(args)
    return await action.run(params, action_context(timeout=action.timeout))


def actions_of(connector: McpConnector) -> dict[str, Any]:
    return {action.id: action for action in connector.actions()}


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


@pytest.fixture
async def web() -> AsyncIterator[tuple[str, ServerState]]:
    """The scripted server over streamable HTTP: its URL and what its tools observed."""
    server, state = build_server()
    async with serve_http(server) as url:
        yield url, state


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LAM_TEST_CANARY", CANARY)
    return CANARY


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


# Settings


def test_settings_need_exactly_one_transport() -> None:
    """Neither or both transports, or options of the other transport, are refused by name."""
    url = "http://h/mcp"
    cases: list[tuple[str, dict[str, Any]]] = [
        ("give exactly one of 'command'", {}),
        ("give exactly one of 'command'", {"command": ["x"], "url": url}),
        ("'headers' apply to a server at a 'url'", {"command": ["x"], "headers": {"A": "b"}}),
        ("'env' and 'cwd' apply to a 'command'", {"url": url, "cwd": "/"}),
        ("must be an http:// or https:// URL", {"url": "ftp://h/mcp"}),
        ("header name 'Bad Name'", {"url": url, "headers": {"Bad Name": "x"}}),
        ("environment variable '1X'", {"command": ["x"], "env": {"1X": "y"}}),
        (
            "'restart_delay' must not be more",
            {"command": ["x"], "restart_delay": 5.0, "restart_delay_max": 1.0},
        ),
        (
            "give 'include' or 'exclude'",
            {"command": ["x"], "tools": {"include": ["a"], "exclude": ["b"]}},
        ),
    ]
    for message, settings in cases:
        with pytest.raises(ValidationError, match=message):
            McpSettings.model_validate(settings)


def test_url_credentials_and_literal_secrets_are_refused_without_echo() -> None:
    """A password in the URL or a literal secret value stops the instance, never repeated."""
    configs = [
        ConnectorConfig(type="mcp", name="in_url", settings={"url": "https://bob:hunter2@h/mcp"}),
        ConnectorConfig(
            type="mcp",
            name="literal",
            settings={"url": "https://h/mcp", "headers": {"X-Key": {"secret": "s3cr3t!"}}},
        ),
    ]
    message = "; ".join(
        str(instance.problem) for instance in check_connectors(configs, {"mcp": McpConnector})
    )
    assert "connector 'in_url' (mcp): url must not hold credentials" in message
    assert "connector 'literal' (mcp): headers.X-Key" in message
    assert "must be a reference" in message
    assert "hunter2" not in message and "s3cr3t!" not in message


def test_secrets_resolve_and_reach_the_redactor(canary: str) -> None:
    """Secret env values and headers resolve from references and are listed for masking."""
    settings = McpSettings.model_validate(
        {
            "url": "https://h/mcp",
            "headers": {
                "Authorization": {"secret": "env:LAM_TEST_CANARY", "prefix": "Bearer "},
                "X-Client": "lam",
            },
        }
    )
    assert secret_values(settings) == [canary]
    assert canary not in repr(settings)


# Input schemas


def test_schema_becomes_a_typed_model_validated_as_sent() -> None:
    """Types, nullables, defaults, enums and nested objects are typed; the rest is jsonschema's."""
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "pattern": "^/"},
            "count": {"type": "integer", "minimum": 1, "default": 10},
            "since": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "mode": {"enum": ["fast", "slow"]},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "filter": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["name"],
            },
            "from": {"type": "string"},
        },
        "required": ["path"],
    }
    model = params_model("ExampleParams", "An example.", schema)
    params = model.model_validate(
        {"path": "/srv", "count": "5", "filter": {"name": "x"}, "from": "a"}
    )
    assert params.arguments() == {"path": "/srv", "count": 5, "filter": {"name": "x"}, "from": "a"}
    again = model.model_validate(params.model_dump(mode="json"))
    assert again.arguments() == params.arguments()
    planner_schema = model.model_json_schema()
    assert planner_schema["required"] == ["path"]
    assert planner_schema["properties"]["path"]["pattern"] == "^/"
    assert planner_schema["additionalProperties"] is False

    catalog = Catalog.of([Action("srv.example", "An example.", model, _never)])
    refusals = {
        "count: Input should be greater than or equal to 1": {"path": "/", "count": 0},
        "mode: Input should be 'fast' or 'slow'": {"path": "/", "mode": "medium"},
        "path: 'relative' does not match '^/'": {"path": "relative"},
        "tags: ['a', 'a'] has non-unique elements": {"path": "/", "tags": ["a", "a"]},
        "filter.other: Extra inputs are not permitted": {
            "path": "/",
            "filter": {"name": "x", "other": 1},
        },
        "colour: Extra inputs are not permitted": {"path": "/", "colour": "red"},
        "path: Field required": {},
    }
    for message, args in refusals.items():
        with pytest.raises(InvalidArguments) as refused:
            catalog.validate("srv.example", args)
        assert message in str(refused.value)


def test_untypeable_schema_is_shown_verbatim_and_checked_by_jsonschema() -> None:
    """A schema with ``$ref`` keeps the server's form for the planner; jsonschema checks it."""
    schema = {
        "type": "object",
        "$defs": {"Size": {"type": "integer", "minimum": 1}},
        "properties": {"size": {"$ref": "#/$defs/Size"}, "label": {"type": "string"}},
        "required": ["size"],
    }
    model = params_model("SizedParams", "Sized.", schema)
    assert model.model_json_schema() == schema
    assert model.model_validate({"size": 3, "label": "x"}).arguments() == {"size": 3, "label": "x"}
    for args, message in [
        ({"size": 0}, "size: 0 is less than the minimum of 1"),
        ({}, "'size' is a required property"),
        ({"size": 1, "other": 2}, "Additional properties are not allowed"),
    ]:
        with pytest.raises(ValidationError, match=message):
            model.model_validate(args)


def test_names_are_normalised_and_clashes_fail_at_start() -> None:
    """Tool names become [a-z0-9_] ids; two tools with one id stop the start, later only warn."""
    assert action_name("getUser") == "get_user"
    assert action_name("search-issues.v2") == "search_issues_v2"
    tools = [
        types.Tool(name=name, inputSchema={"type": "object", "properties": {}})
        for name in ("getUser", "get-user", "list")
    ]
    settings = McpSettings.model_validate({"command": ["x"]})
    with pytest.raises(ConfigError, match="becomes action srv.get_user, as tool 'getUser' does"):
        build_actions("srv", tools, settings, handler=lambda tool: _never, strict=True)
    with structlog.testing.capture_logs() as logs:
        later = build_actions("srv", tools, settings, handler=lambda tool: _never, strict=False)
    assert [a.id for a in later.values()] == ["srv.get_user", "srv.list"]
    assert logs[0]["event"] == "mcp.tool_left_out"


def test_a_tool_with_an_invalid_schema_is_left_out_never_fatal() -> None:
    """A server's broken schema leaves that tool out, logged; the others become actions."""
    tools = [
        types.Tool(name="broken", inputSchema={"type": "object", "properties": {"a": {"type": 5}}}),
        types.Tool(name="fine", inputSchema={"type": "object", "properties": {}}),
    ]
    settings = McpSettings.model_validate({"command": ["x"]})
    with structlog.testing.capture_logs() as logs:
        actions = build_actions("srv", tools, settings, handler=lambda tool: _never, strict=True)
    assert list(actions) == ["fine"]
    assert "its input schema is invalid" in logs[0]["problem"]


async def _never(params: Any, ctx: Any) -> ActionResult:
    raise AssertionError("not called")


def test_backoff_doubles_up_to_its_bound() -> None:
    """Restart delays double from the first delay and stop growing at the maximum."""
    backoff = Backoff(0.5, 30.0)
    assert [backoff.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


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

        status = await run(git, "git_status", repo_path=str(repo))
        assert "nothing to commit, working tree clean" in status.output
        log = await run(git, "git_log", repo_path=str(repo), max_count=5)
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
    connector = make(
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


# The scripted server over streamable HTTP


async def test_http_tools_run_with_their_results_described(web: tuple[str, ServerState]) -> None:
    """Text is the output, structured content the data, an image is described; risk from hints."""
    url, _ = web
    async with started("web", url=url) as (server, _):
        actions = actions_of(server)
        risks = {tool: actions[f"web.{tool}"].risk for tool in ("lookup", "purge", "touch")}
        assert risks == {"lookup": "read", "purge": "destructive", "touch": "write"}
        assert (await run(server, "lookup", key="k")).output == "value of k"
        assert (await run(server, "touch", name="f")).output == "touched f 1 times"
        assert (await run(server, "picture")).output == f"[image/png, {PNG_BYTES} bytes]"
        stats = await run(server, "stats")
        assert stats.data == {"count": 2, "names": ["a", "b"]}


async def test_a_tool_error_fails_the_step_with_its_message(web: tuple[str, ServerState]) -> None:
    """A result marked isError fails with the tool's own message."""
    url, _ = web
    async with started("web", url=url) as (server, _):
        with pytest.raises(
            ActionFailed, match="MCP tool 'fail' of server 'web' reported an error: .*disk on fire"
        ):
            await run(server, "fail", message="disk on fire")


async def test_a_hanging_tool_times_out_and_is_cancelled_on_the_server(
    web: tuple[str, ServerState],
) -> None:
    """A tool past its timeout fails, and the server is told to cancel it."""
    url, state = web
    async with started("web", url=url, overrides={"hang": {"timeout": 0.5}}) as (server, _):
        with pytest.raises(
            ActionFailed, match="did not answer within 0.45s; LAM asked the server to cancel it"
        ):
            await run(server, "hang")
        assert state.hang_started.is_set()
        await asyncio.wait_for(state.hang_cancelled.wait(), 2)
        assert (await run(server, "lookup", key="after")).output == "value of after"


async def test_ten_megabytes_of_output_are_cut_at_the_limit(web: tuple[str, ServerState]) -> None:
    """A 10 MB result keeps the first output_limit_bytes, says so, and drops oversized data."""
    url, _ = web
    async with started("web", url=url, output_limit_bytes=100_000) as (server, _):
        result = await run(server, "flood", megabytes=10)
    kept, _, note = result.output.partition("\n[output truncated")
    assert kept == "x" * 100_000
    assert "kept the first 100000 of 10485760 bytes]" in note
    assert "[structured content of 10485774 bytes dropped" in note
    assert result.data is None


async def test_list_changed_brings_the_new_tool_into_the_catalog(
    web: tuple[str, ServerState],
) -> None:
    """A tool the server adds and announces becomes an action the catalog offers and runs."""
    url, _ = web
    catalog = Catalog(())
    refreshed = asyncio.Event()

    def changed() -> None:  # what start_connectors passes, and a signal for the test
        catalog.refresh()
        refreshed.set()

    server = make("web", url=url)
    await server.start(changed)
    try:
        catalog.connectors = [server]
        catalog.refresh()
        assert "web.fresh" not in catalog
        await run(server, "grow", name="fresh")
        await asyncio.wait_for(refreshed.wait(), 5)
        assert catalog.get("web.fresh").risk == "read"
        assert (await run(server, "fresh")).output == "fresh was added"
    finally:
        await server.aclose()


async def test_a_paginated_tool_list_is_read_to_its_end() -> None:
    """Tools listed a few per page are all found."""
    server, _ = build_server(page_size=3)
    async with serve_http(server) as url, started("web", url=url) as (paged, _):
        assert len(paged.actions()) == len(await server.list_tools()) > 3


async def test_http_server_that_goes_away_is_reconnected() -> None:
    """Calls fail clearly while an HTTP server is gone, and work again once it is back."""
    server, _ = build_server()
    async with serve_http(server) as url:
        connector = make("web", url=url, restart_delay=0.05, restart_delay_max=0.2)
        back = asyncio.Event()
        await connector.start(back.set)
    try:
        with pytest.raises(RetryableError, match="MCP server 'web' disconnected: cannot reach it"):
            await run(connector, "lookup", key="k")
        with pytest.raises(
            RetryableError, match="is not available .*reconnecting to it in the background"
        ):
            await run(connector, "lookup", key="k")
        again, _ = build_server()
        async with serve_http(again, port=urlsplit(url).port or 0):
            await asyncio.wait_for(back.wait(), 5)
            assert (await run(connector, "lookup", key="k")).output == "value of k"
    finally:
        await connector.aclose()


async def test_a_restarted_http_server_that_forgot_the_session_is_reconnected() -> None:
    """A server that lost LAM's session refuses the call unrun (retryable); LAM reconnects."""
    server, _ = build_server()
    async with serve_http(server) as url:
        connector = make("web", url=url, restart_delay=0.05, restart_delay_max=0.2)
        back = asyncio.Event()
        await connector.start(back.set)
    try:
        again, _ = build_server()
        async with serve_http(again, port=urlsplit(url).port or 0):
            with pytest.raises(
                RetryableError, match="forgotten LAM's session, so tool 'touch' was not run"
            ):
                await run(connector, "touch", name="f")
            await asyncio.wait_for(back.wait(), 5)
            assert (await run(connector, "touch", name="f")).output == "touched f 1 times"
    finally:
        await connector.aclose()


# The scripted server as a subprocess over stdio


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_server_killed_mid_call_fails_the_call_then_comes_back(
    tmp_path: Path, canary: str
) -> None:
    """The call in flight fails naming the exit, calls fail fast while down, then work again."""
    async with started("proc", **scripted(tmp_path)) as (proc, back):
        first_pid = int((await run(proc, "pid")).output)
        with pytest.raises(ActionFailed) as crashed:
            await run(proc, "crash", say="segfault in frobnicator")
        assert type(crashed.value) is ActionFailed  # not retryable: crash is not idempotent
        assert str(crashed.value) == (
            "MCP server 'proc' exited: its process ended; its stderr ended with: segfault in"
            " frobnicator; whether tool 'crash' did its work is unknown; LAM is restarting it"
        )
        with pytest.raises(
            RetryableError, match="MCP server 'proc' is not available .*tool 'lookup' was not run"
        ):
            await run(proc, "lookup", key="k")
        await asyncio.wait_for(back.wait(), 5)
        assert (await run(proc, "lookup", key="k")).output == "value of k"
        assert int((await run(proc, "pid")).output) != first_pid
        assert process_is_gone(first_pid)


async def test_restarts_back_off_exponentially_to_the_bound(tmp_path: Path, canary: str) -> None:
    """A server that keeps failing to start is retried after 0.05, 0.1, 0.2, 0.2 s, then is back."""
    with structlog.testing.capture_logs() as logs:
        async with started("proc", **scripted(tmp_path)) as (proc, back):
            with pytest.raises(ActionFailed, match="exited"):
                await run(proc, "crash", fail_next_starts=3)
            await asyncio.wait_for(back.wait(), 5)
            assert (await run(proc, "lookup", key="k")).output == "value of k"
    down = [entry for entry in logs if entry["event"] == "mcp.server_down"]
    assert [entry["restart_in"] for entry in down] == [0.05, 0.1, 0.2, 0.2]
    assert "refusing to start: 3 failures left" in down[1]["reason"]
    assert any(entry["event"] == "mcp.server_back" for entry in logs)


async def test_closing_stops_the_server_and_fails_the_call_in_flight(
    tmp_path: Path, canary: str
) -> None:
    """aclose fails a call in flight with the reason, ends the process, and leaves no task."""
    tasks_before = asyncio.all_tasks()
    proc = make("proc", **scripted(tmp_path))
    await proc.start(lambda: None)
    pid = int((await run(proc, "pid")).output)
    hanging = asyncio.create_task(run(proc, "hang"))
    # Tasks start in the order they were made: hang's request is written before pid's,
    # so once pid has its answer, hang is in flight on the server.
    await run(proc, "pid")
    await proc.aclose()
    with pytest.raises(ActionFailed, match="MCP connector 'proc' was closed while tool 'hang' ran"):
        await hanging
    with pytest.raises(
        ActionFailed, match="MCP connector 'proc' is closed; tool 'lookup' was not run"
    ):
        await run(proc, "lookup", key="k")
    assert process_is_gone(pid)
    assert asyncio.all_tasks() == tasks_before


async def test_a_canary_secret_never_leaves_the_connector(
    tmp_path: Path, canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret in env is masked in output, tool errors, crash reports and every log."""
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        async with started("proc", **scripted(tmp_path)) as (proc, back):
            assert (await run(proc, "env", name="TOKEN")).output == "***"
            with pytest.raises(ActionFailed) as tool_error:
                await run(proc, "fail_with_env", name="TOKEN")
            with pytest.raises(ActionFailed) as crash:
                await run(proc, "crash", say_env="TOKEN")
            await asyncio.wait_for(back.wait(), 5)
    assert "reported an error: Error executing tool fail_with_env: ***" in str(tool_error.value)
    assert "its stderr ended with: env says ***" in str(crash.value)
    assert any(entry.get("line") == "env says ***" for entry in logs)
    assert canary not in repr(logs)
    assert canary not in caplog.text


async def test_a_canary_header_secret_never_leaves_the_connector(
    canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bearer token from a secret reaches the server, and is masked wherever it comes back."""
    # The SDK's debug traces hold raw protocol text (here the server echoing the token):
    # LAM's log pipeline masks the catalog's secrets in them (bot.logs).
    caplog.set_level(logging.INFO)
    server, _ = build_server()
    header = {"Authorization": {"secret": "env:LAM_TEST_CANARY", "prefix": "Bearer "}}
    with structlog.testing.capture_logs() as logs:
        async with serve_http(server, token=canary) as url:
            async with started("web", url=url, headers=header) as (web, _):
                assert (await run(web, "header", name="authorization")).output == "Bearer ***"
            refused = make("web", url=url, headers={"Authorization": "Bearer wrong"})
            with pytest.raises(
                StartFailed, match="did not start: it answered HTTP 401 Unauthorized"
            ):
                await refused.start(lambda: None)
            await refused.aclose()
    assert canary not in repr(logs)
    assert canary not in caplog.text


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
    connector = make("silent", command=[sys.executable, "-c", silent], connect_timeout=1)
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
    git = make("git", command=[GIT_SERVER, "--repository", str(repo)])
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
    events = [e async for e in engine.store.audit_events() if e.request_id == record.id]
    assert [e.kind for e in events][-3:] == ["step.started", "step.finished", "request.succeeded"]
    assert events[1].decisions[0].rule.startswith("p, role:developer, staging, git.git_status")

    reset = await engine.ask(
        Request.model_validate({"text": f"run git.git_reset repo_path={repo} in staging", **ask})
    )
    assert reset.state == "awaiting_approval"
    assert reset.plan is not None and reset.plan.steps[0].risk == "destructive"
    assert await engine.verify_audit() == len(events) + 3
