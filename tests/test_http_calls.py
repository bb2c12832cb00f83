"""The http connector's declared calls against a real aiohttp service: parameters, risk,
failures, secrets and dry runs."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue, ValidationError

from bot.errors import ActionFailed, RetryableError
from connectors import describe_validation_error
from connectors._http_response import kept
from connectors.base import Connector
from connectors.http import HttpConnector, HttpSettings
from tests.support.connector_actions import data_of, run_action
from tests.support.http_connector import CANARY, TOKEN_ENV, MakeHttpConnector, call, no_canary
from tests.support.http_service import HttpService

# Declared calls


async def test_declared_call_puts_each_parameter_where_declared_and_sends_the_token(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """Path, query, header and body parameters land where declared, with the bearer token."""
    api, _ = http_service
    restart = call(
        "/services/{service}/restart",
        "POST",
        params={
            "service": {"pattern": "[a-z]+"},
            "dry": {"type": "boolean", "default": False, "in": "query", "name": "dryRun"},
            "request_id": {"in": "header", "name": "X-Request-Id", "required": False},
            "reason": {},
            "force": {"type": "boolean", "required": False},
        },
        keep=["job.id", "received"],
        resource="service",
    )
    connector = await make_http_connector(calls={"restart": restart})
    assert isinstance(connector, Connector) and HttpConnector.type_name == "http"
    result = await run_action(
        connector, "restart", service="web", reason="deploy", request_id="r-1"
    )
    seen = api.received[-1]
    assert seen.raw_path == "/api/services/web/restart?dryRun=false"
    assert seen.headers["X-Request-Id"] == "r-1"
    assert seen.headers["Authorization"] == f"Bearer {CANARY}"
    assert seen.json == {"reason": "deploy"}
    assert result.data == {"job": {"id": 42}, "received": {"reason": "deploy"}}
    assert result.output == "202 Accepted\njob.id: 42\nreceived.reason: deploy"
    action = connector.actions()[0]
    assert (action.risk, action.idempotent, action.resource_param) == ("write", False, "service")
    with pytest.raises(ValidationError, match="pattern"):
        action.params.model_validate({"service": "Web!", "reason": "x"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        action.params.model_validate({"service": "web", "reason": "x", "url": "http://evil"})


async def test_risk_and_idempotence_default_by_method_and_can_be_overridden(
    make_http_connector: MakeHttpConnector,
) -> None:
    """GET reads, POST and PUT write (PUT idempotently), DELETE destroys; lam.yaml may override."""
    connector = await make_http_connector(
        calls={
            "get": call("/text"),
            "post": call("/text", "POST"),
            "put": call("/text", "PUT"),
            "delete": call("/text", "DELETE"),
            "purge": call("/text", "POST", risk="destructive", idempotent=True),
        }
    )
    assert {a.id: (a.risk, a.idempotent) for a in connector.actions()} == {
        "api.get": ("read", True),
        "api.post": ("write", False),
        "api.put": ("write", True),
        "api.delete": ("destructive", True),
        "api.purge": ("destructive", True),
    }


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"calls": {"c": call("/x", bogus=1)}}, "Extra inputs are not permitted"),
        ({"calls": {"c": call("/x/{id}")}}, "uses ['id'], which are not declared path parameters"),
        ({"calls": {"c": call("/x/{id}", params={"id": {"required": False}})}}, "must be required"),
        ({"calls": {"c": call("/x", params={"q": {"in": "body"}})}}, "a GET request has no body"),
        (
            {"calls": {"c": call("/x", params={"h": {"in": "header", "name": "Authorization"}})}},
            "set by LAM",
        ),
        (
            {"calls": {"c": call("/x", params={"p": {"type": "path", "under": ["/"]}})}},
            "local file",
        ),
        ({"calls": {"c": call("https://{host}/x")}}, "only in its path"),
        ({"openapi": "/tmp/doc.json"}, "needs 'operations' or 'tags'"),
        ({"tags": ["x"], "calls": {"c": call("/x")}}, "need 'openapi'"),
        (
            {"allow_hosts": ["https://api.example.com/"], "calls": {"c": call("/x")}},
            "without a scheme",
        ),
        (
            {"auth": {"type": "bearer", "token": CANARY}, "calls": {"c": call("/x")}},
            "must be a reference",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_reason(settings: dict[str, Any], problem: str) -> None:
    """Each mistake in the settings is refused with a message naming it, never echoing a secret."""
    with pytest.raises(ValidationError) as error:
        HttpSettings.model_validate({"base_url": "https://api.example.com/v1", **settings})
    # What start_connectors reports: each error without the input value.
    reported = "; ".join(describe_validation_error(e) for e in error.value.errors())
    assert problem in reported
    assert CANARY not in reported


async def test_path_values_stay_one_segment_on_the_same_host(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """Slashes, dots, '@', '?' and '#' in a path value are escaped; '.' and '..' are refused."""
    api, _ = http_service
    connector = await make_http_connector(
        calls={"item": call("/items/{name}", params={"name": {}})}
    )
    with pytest.raises(ActionFailed, match="HTTP 404"):
        await run_action(connector, "item", name="../../openapi.json")
    with pytest.raises(ActionFailed, match="HTTP 404"):
        await run_action(connector, "item", name="x@evil.example#?a=b")
    assert api.paths()[-2:] == [
        "/api/items/..%2F..%2Fopenapi.json",
        "/api/items/x%40evil.example%23%3Fa%3Db",
    ]
    params = connector.actions()[0].params
    for value in ("..", ".", ""):
        with pytest.raises(ValidationError, match="cannot be a URL path segment"):
            params.model_validate({"name": value})


# Failures


async def test_a_5xx_is_retryable_for_get_but_not_for_post(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """An idempotent GET that gets a 500 asks for a retry; a POST reports it and is not repeated."""
    connector = await make_http_connector(
        calls={
            "get": call("/flaky/{key}", params={"key": {}}),
            "post": call("/flaky/{key}", "POST", params={"key": {}}),
        }
    )
    with pytest.raises(
        RetryableError, match=r"GET /api/flaky/a: HTTP 500 Internal Server Error: \{\"error\""
    ):
        await run_action(connector, "get", key="a")
    with pytest.raises(ActionFailed) as error:
        await run_action(connector, "post", key="b")
    assert not error.value.retryable
    assert "not retried, as this POST is not idempotent" in str(error.value)


async def test_a_hanging_call_times_out_within_both_bounds(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """A call stops at its own timeout, and earlier when the executor allows less."""
    connector = await make_http_connector(
        calls={"hang": call("/hang", timeout=0.3), "hang_long": call("/hang")}
    )
    with pytest.raises(RetryableError, match=r"GET /api/hang: no response within 0.3s"):
        await run_action(connector, "hang")
    assert http_service[0].hanging.is_set()
    with pytest.raises(RetryableError, match=r"no response within 0.45s"):
        await run_action(connector, "hang_long", budget=0.5)


@pytest.mark.parametrize("declared", [False, True])
async def test_a_body_over_the_cap_fails_without_being_kept(
    make_http_connector: MakeHttpConnector, declared: bool
) -> None:
    """A 10 MB body stops the read at the 1 MiB cap, streamed or announced by Content-Length."""
    connector = await make_http_connector(
        calls={"big": call("/big" + ("?declared=1" if declared else ""))}
    )
    with pytest.raises(
        ActionFailed, match="the response is larger than 1048576 bytes; nothing was kept"
    ):
        await run_action(connector, "big")


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/bad-utf8", "the response (text/plain) is not valid utf-8 text (bad byte at offset 8)"),
        ("/not-json", "the response says it is JSON but is not"),
        ("/missing", 'HTTP 404 Not Found: {"error": "no such service"}'),
    ],
)
async def test_unusable_responses_fail_clearly(
    make_http_connector: MakeHttpConnector, path: str, problem: str
) -> None:
    """Invalid UTF-8, JSON that is not, and a 4xx each fail with what was wrong, not retried."""
    connector = await make_http_connector(calls={"c": call(path)})
    with pytest.raises(ActionFailed) as error:
        await run_action(connector, "c")
    assert problem in str(error.value)
    assert not error.value.retryable


async def test_a_text_response_is_the_output(make_http_connector: MakeHttpConnector) -> None:
    """A text/plain body is returned as it is, after the status."""
    connector = await make_http_connector(calls={"c": call("/text")})
    assert (await run_action(connector, "c")).output == "200 OK\nall good\n"


# Secrets


async def test_the_token_never_appears_in_output_data_or_errors(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """A service echoing the bearer token back, in a success or a 401, shows only ***."""
    connector = await make_http_connector(calls={"echo": call("/echo"), "who": call("/whoami")})
    echoed = await run_action(connector, "echo")
    assert data_of(echoed)["headers"]["Authorization"] == "Bearer ***"
    assert no_canary(echoed.output, echoed.data)
    http_service[0].token = "another-token"
    with pytest.raises(ActionFailed) as error:
        await run_action(connector, "who")
    assert "HTTP 401 Unauthorized" in str(error.value) and "Bearer ***" in str(error.value)
    assert no_canary(str(error.value))


async def test_basic_and_header_credentials_are_masked_in_every_form(
    make_http_connector: MakeHttpConnector,
    http_service: tuple[HttpService, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Basic auth's password and its base64 form, and a header secret, never come back."""
    secret_file = tmp_path / "password"
    secret_file.write_text(CANARY + "\n", encoding="utf-8")
    basic = await make_http_connector(
        auth={"type": "basic", "username": "lam", "password": f"file:{secret_file}"},
        calls={"echo": call("/echo")},
    )
    encoded = base64.b64encode(f"lam:{CANARY}".encode()).decode()
    result = await run_action(basic, "echo")
    assert http_service[0].received[-1].headers["Authorization"] == f"Basic {encoded}"
    assert encoded not in result.output and no_canary(result.output, result.data)
    keyed = await make_http_connector(
        "keyed",
        auth={"type": "header", "name": "X-Api-Key", "value": f"env:{TOKEN_ENV}"},
        calls={"echo": call("/echo")},
    )
    result = await run_action(keyed, "echo")
    assert http_service[0].received[-1].headers["X-Api-Key"] == CANARY
    assert data_of(result)["headers"]["X-Api-Key"] == "***"


# Dry run


async def test_dry_run_describes_or_asks_the_api_or_is_refused(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """'describe' sends nothing; a declared switch is sent to the API; without dry_run, none."""
    api, origin = http_service
    params: dict[str, Any] = {"service": {}, "reason": {}}
    connector = await make_http_connector(
        calls={
            "describe": call(
                "/services/{service}/restart", "POST", params=params, dry_run="describe"
            ),
            "switch": call(
                "/services/{service}/restart",
                "POST",
                params=params,
                dry_run={"query": {"dryRun": "true"}},
            ),
            "none": call("/services/{service}/restart", "POST", params=params),
        }
    )
    supports = {a.id: a.supports_dry_run for a in connector.actions()}
    assert supports == {"api.describe": True, "api.switch": True, "api.none": False}
    described = await run_action(connector, "describe", dry_run=True, service="web", reason="test")
    assert api.received == []
    assert described.output == (
        f"dry run: would send POST {origin}/api/services/web/restart (plus bearer credentials)\n"
        'body: {"reason":"test"}'
    )
    assert no_canary(described.output, described.data)
    switched = await run_action(connector, "switch", dry_run=True, service="web", reason="test")
    assert api.paths() == ["/api/services/web/restart?dryRun=true"]
    assert data_of(switched)["dry_run"] is True
    with pytest.raises(ActionFailed, match="has no dry-run mode; nothing was sent"):
        await run_action(connector, "none", dry_run=True, service="web", reason="test")
    assert len(api.received) == 1


async def test_a_closed_connector_sends_nothing(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """After aclose the shared session is gone and a call fails instead of opening another."""
    connector = await make_http_connector(calls={"c": call("/text")})
    await connector.aclose()
    with pytest.raises(ActionFailed, match="is not started; nothing was sent"):
        await run_action(connector, "c")
    assert http_service[0].received == []


def test_keep_prunes_a_response_to_the_named_paths() -> None:
    """Dotted paths keep their nesting, '*' steps through lists, and absent paths are left out."""
    body: JsonValue = {
        "items": [{"id": 1, "name": "a", "x": 0}, {"id": 2, "x": 1}],
        "total": 2,
        "meta": {"a": 1},
    }
    assert kept(body, ["items.*.id", "items.*.name", "total", "nothing.here"]) == {
        "items": [{"id": 1, "name": "a"}, {"id": 2}],
        "total": 2,
    }
