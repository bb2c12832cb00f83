"""The mcp connector's settings and the actions it builds from a server's tools: transports,
secrets, input schemas, names and restart back-off, without a server."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from mcp import types
from pydantic import ValidationError

from bot.errors import ConfigError, InvalidArguments
from connectors import Catalog, ConnectorConfig, check_connectors
from connectors._mcp_schema import params_model
from connectors._mcp_supervisor import Backoff
from connectors._mcp_tools import action_name, build_actions
from connectors.base import Action, ActionResult
from connectors.mcp import McpConnector, McpSettings
from connectors.secrets import secret_values

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


def test_secrets_resolve_and_reach_the_redactor(mcp_canary: str) -> None:
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
    assert secret_values(settings) == [mcp_canary]
    assert mcp_canary not in repr(settings)


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
