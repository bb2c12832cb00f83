"""The http connector against a real aiohttp service: calls, OpenAPI, egress, failures, secrets."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import JsonValue, ValidationError

from bot.audit import Redactor
from bot.engine import Engine, EngineOptions
from bot.errors import ActionFailed, ConfigError, RetryableError
from bot.execution import ExecutionOptions
from bot.models import Request
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from bot.store.sqlite import SqliteStore
from connectors import Catalog, ConnectorConfig, describe_validation_error, start_connectors
from connectors._egress import AllowedHost
from connectors._http_response import kept
from connectors.base import ActionResult, Connector
from connectors.http import HttpConnector, HttpSettings
from tests.conftest import write_policy
from tests.support.actions import action_context
from tests.support.http_service import HttpService, openapi_document, serving

CANARY = "canary-3f9a-secret-token"
TOKEN_ENV = "LAM_TEST_HTTP_TOKEN"

Make = Callable[..., Awaitable[HttpConnector]]


@pytest.fixture
async def service() -> AsyncIterator[tuple[HttpService, str]]:
    """The API under test, expecting the canary as its bearer token."""
    api = HttpService(token=CANARY)
    async with serving(api) as origin:
        yield api, origin


@pytest.fixture
async def other() -> AsyncIterator[tuple[HttpService, str]]:
    """A second service on another port: a host redirects may or may not lead to."""
    elsewhere = HttpService()
    async with serving(elsewhere) as origin:
        yield elsewhere, origin


@pytest.fixture
async def make(
    service: tuple[HttpService, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Make]:
    """Builds and starts an http connector on the service (bearer canary unless told)."""
    monkeypatch.setenv(TOKEN_ENV, CANARY)
    started: list[HttpConnector] = []

    async def build(name: str = "api", **settings: Any) -> HttpConnector:
        defaults = {
            "base_url": service[1] + "/api",
            "auth": {"type": "bearer", "token": "env:" + TOKEN_ENV},
        }
        connector = HttpConnector(name, HttpSettings.model_validate({**defaults, **settings}))
        started.append(connector)
        await connector.start(lambda: None)
        return connector

    yield build
    for connector in started:
        await connector.aclose()


async def run(
    connector: HttpConnector,
    action: str,
    *,
    dry_run: bool = False,
    budget: float = 30.0,
    **args: Any,
) -> ActionResult:
    found = {a.id: a for a in connector.actions()}[f"{connector.name}.{action}"]
    return await found.run(
        found.params.model_validate(args), action_context(dry_run=dry_run, timeout=budget)
    )


def call(url: str, method: str = "GET", **fields: Any) -> dict[str, Any]:
    return {"description": f"{method} {url}", "method": method, "url": url, **fields}


def data_of(result: Any) -> dict[str, Any]:
    """The structured output of a result or step that returned a JSON object."""
    assert isinstance(result.data, dict), result.data
    return result.data


def no_canary(*texts: object) -> bool:
    return all(CANARY not in json.dumps(text) for text in texts)


# Declared calls


async def test_declared_call_puts_each_parameter_where_declared_and_sends_the_token(
    make: Make, service: tuple[HttpService, str]
) -> None:
    """Path, query, header and body parameters land where declared, with the bearer token."""
    api, _ = service
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
    connector = await make(calls={"restart": restart})
    assert isinstance(connector, Connector) and HttpConnector.type_name == "http"
    result = await run(connector, "restart", service="web", reason="deploy", request_id="r-1")
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


async def test_risk_and_idempotence_default_by_method_and_can_be_overridden(make: Make) -> None:
    """GET reads, POST and PUT write (PUT idempotently), DELETE destroys; lam.yaml may override."""
    connector = await make(
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
    make: Make, service: tuple[HttpService, str]
) -> None:
    """Slashes, dots, '@', '?' and '#' in a path value are escaped; '.' and '..' are refused."""
    api, _ = service
    connector = await make(calls={"item": call("/items/{name}", params={"name": {}})})
    with pytest.raises(ActionFailed, match="HTTP 404"):
        await run(connector, "item", name="../../openapi.json")
    with pytest.raises(ActionFailed, match="HTTP 404"):
        await run(connector, "item", name="x@evil.example#?a=b")
    assert api.paths()[-2:] == [
        "/api/items/..%2F..%2Fopenapi.json",
        "/api/items/x%40evil.example%23%3Fa%3Db",
    ]
    params = connector.actions()[0].params
    for value in ("..", ".", ""):
        with pytest.raises(ValidationError, match="cannot be a URL path segment"):
            params.model_validate({"name": value})


# OpenAPI import


async def test_openapi_operations_chosen_by_id_become_typed_actions(
    make: Make, service: tuple[HttpService, str]
) -> None:
    """Each chosen operationId is an action whose Params follow its parameters and JSON body."""
    api, origin = service
    connector = await make(
        base_url=None,
        openapi=origin + "/openapi.json",
        operations=["getService", "restartService"],
        operation_settings={
            "restartService": {"resource": "service", "examples": ["bounce {service}"]}
        },
    )
    actions = {a.id: a for a in connector.actions()}
    assert set(actions) == {"api.get_service", "api.restart_service"}
    restart = actions["api.restart_service"]
    assert (restart.risk, restart.idempotent, restart.examples) == (
        "write",
        False,
        ("bounce {service}",),
    )
    assert restart.description == "Restart a service."
    for bad, problem in [
        ({"service": "web"}, "reason"),
        ({"service": "Web", "reason": "deploy"}, "pattern"),
        ({"service": "web", "reason": "no"}, "at least 3 characters"),
        ({"service": "web", "reason": "deploy", "wait_seconds": -1}, "greater than or equal to 0"),
        ({"service": "web", "reason": "deploy", "id": "x"}, "Extra inputs"),
    ]:
        with pytest.raises(ValidationError, match=problem):
            restart.params.model_validate(bad)
    result = await run(
        connector,
        "restart_service",
        service="web",
        reason="deploy",
        labels=["a"],
        x_request_id="r-9",
    )
    seen = api.received[-1]
    assert seen.raw_path == "/api/services/web/restart"
    assert seen.json == {"reason": "deploy", "force": False, "labels": ["a"]}
    assert seen.headers["X-Request-Id"] == "r-9"
    assert data_of(result)["job"] == {"id": 42, "state": "queued"}


async def test_openapi_tags_select_operations_with_nested_typed_bodies(
    make: Make, service: tuple[HttpService, str]
) -> None:
    """Operations are chosen by tag; a nested object in the body is a typed, closed model."""
    api, origin = service
    connector = await make(
        base_url=None, openapi=origin + "/openapi.json", tags=["services", "ops"]
    )
    assert {a.id for a in connector.actions()} == {
        "api.list_services",
        "api.get_service",
        "api.restart_service",
        "api.put_service_config",
    }
    config = {a.id: a for a in connector.actions()}["api.put_service_config"]
    assert (config.risk, config.idempotent) == ("write", True)
    with pytest.raises(ValidationError, match="Extra inputs"):
        config.params.model_validate({"service": "web", "replicas": 1, "limits": {"disk": 1}})
    with pytest.raises(ValidationError, match="'blue' or 'green'"):
        config.params.model_validate({"service": "web", "replicas": 1, "mode": "red"})
    await run(
        connector,
        "put_service_config",
        service="web",
        replicas=2,
        limits={"cpu": 0.5, "memory-mb": 64},
    )
    assert api.received[-1].json == {"replicas": 2, "limits": {"cpu": 0.5, "memory-mb": 64}}
    listed = await run(connector, "list_services", status="stopped", limit=5)
    assert api.received[-1].raw_path == "/api/services?status=stopped&limit=5"
    assert listed.data == {
        "services": [{"name": "worker", "status": "stopped", "replicas": 0}],
        "total": 1,
    }


async def test_an_operations_risk_can_be_overridden(
    make: Make, service: tuple[HttpService, str]
) -> None:
    """DELETE imports as destructive; operation_settings can make a GET count as a write."""
    connector = await make(
        base_url=None,
        openapi=service[1] + "/openapi.json",
        operations=["deleteService", "getService"],
        operation_settings={"getService": {"risk": "write", "idempotent": False}},
    )
    risks = {a.id: (a.risk, a.idempotent) for a in connector.actions()}
    assert risks == {
        "api.delete_service": ("destructive", True),
        "api.get_service": ("write", False),
    }
    assert (await run(connector, "delete_service", service="web")).output == "204 No Content"


async def test_a_local_yaml_document_names_the_server_to_allow(
    make: Make, service: tuple[HttpService, str], tmp_path: Path
) -> None:
    """A YAML document read from a file works, and its own server URL is allowed by default."""
    document = tmp_path / "api.yaml"
    document.write_text(yaml.safe_dump(openapi_document(service[1] + "/api")), encoding="utf-8")
    connector = await make(base_url=None, openapi=str(document), operations=["getService"])
    result = await run(connector, "get_service", service="db")
    assert data_of(result)["name"] == "db"


@pytest.mark.parametrize(
    ("selection", "problem"),
    [
        ({"operations": ["getServce"]}, "has no operation 'getServce'; did you mean 'getService'?"),
        ({"tags": ["billing"]}, "has no operation tagged 'billing'"),
        (
            {"operations": ["uploadLogs"]},
            "operation 'uploadLogs' (POST /services/{service}/logs): request body types"
            " ['multipart/form-data'] are not supported",
        ),
        (
            {
                "operations": ["getService"],
                "operation_settings": {"getService": {"resource": "svc"}},
            },
            "resource 'svc'",
        ),
    ],
)
async def test_an_operation_that_cannot_be_imported_fails_start_with_the_reason(
    make: Make, service: tuple[HttpService, str], selection: dict[str, Any], problem: str
) -> None:
    """A missing operationId or tag, or an unsupported operation, fails start and says which."""
    with pytest.raises(ValueError) as error:
        await make(base_url=None, openapi=service[1] + "/openapi.json", **selection)
    assert problem in str(error.value)


async def test_a_broken_document_fails_its_instance_while_another_works(
    service: tuple[HttpService, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unparseable OpenAPI document fails that instance alone; the other instance runs."""
    monkeypatch.setenv(TOKEN_ENV, CANARY)
    origin = service[1]
    auth = {"type": "bearer", "token": "env:" + TOKEN_ENV}
    configs = [
        ConnectorConfig(
            type="http", name="broken", settings={"openapi": origin + "/broken.json", "tags": ["x"]}
        ),
        ConnectorConfig(
            type="http",
            name="good",
            settings={"base_url": origin + "/api", "auth": auth, "calls": {"who": call("/whoami")}},
        ),
    ]
    catalog = await start_connectors(configs, {"http": HttpConnector})
    try:
        assert "does not parse as JSON or YAML" in catalog.failures["broken"]
        assert f"{origin}/broken.json" in catalog.failures["broken"]
        assert [a.id for a in catalog] == ["good.who"]
        assert CANARY in catalog.secrets
        who = catalog.get("good.who")
        result = await who.run(who.params(), action_context())
        assert result.data == {"user": "lam"}
    finally:
        for connector in catalog.connectors:
            await connector.aclose()


# Egress


def test_allow_list_entries_admit_exactly_what_they_say() -> None:
    """'host' admits default ports, 'host:port' that port, '*.domain' subdomains only."""
    from yarl import URL

    plain, ported, wildcard = (
        AllowedHost.parse(e) for e in ("API.example.com", "10.0.0.5:8443", "*.example.org")
    )
    assert plain.admits(URL("https://api.example.com/x")) and plain.admits(
        URL("http://api.example.com")
    )
    assert not plain.admits(URL("https://api.example.com:8443/x"))
    assert ported.admits(URL("https://10.0.0.5:8443")) and not ported.admits(
        URL("https://10.0.0.5")
    )
    assert wildcard.admits(URL("https://a.b.example.org")) and not wildcard.admits(
        URL("https://example.org")
    )
    assert not plain.admits(URL("https://api.example.com.evil.net/"))
    with pytest.raises(ValueError, match="not a valid host name"):
        AllowedHost.parse("bad_host!")


async def test_a_declared_url_outside_the_allow_list_is_refused_at_once(
    make: Make, service: tuple[HttpService, str]
) -> None:
    """A call to a host outside the allow-list is a configuration error naming the host."""
    with pytest.raises(
        ConfigError, match=r"host 127\.0\.0\.1:\d+ is not in the allow-list of connector 'api'"
    ):
        await make(allow_hosts=["api.example.com"], calls={"c": call("/text")})


async def test_a_fetched_documents_server_must_already_be_allowed(
    make: Make, service: tuple[HttpService, str], other: tuple[HttpService, str]
) -> None:
    """A document fetched over HTTP cannot widen the allow-list by naming another server."""
    elsewhere, other_origin = other
    document = f"{service[1]}/openapi.json?server={other_origin}/api"
    with pytest.raises(ConfigError, match=r"is not in the allow-list of connector 'api'"):
        await make(base_url=None, openapi=document, operations=["getService"])
    assert elsewhere.received == []


async def test_a_redirect_to_another_allowed_host_is_followed_without_credentials(
    make: Make, service: tuple[HttpService, str], other: tuple[HttpService, str]
) -> None:
    """Credentials go to the first origin only: a redirect to another allowed host gets none."""
    api, origin = service
    elsewhere, other_origin = other
    other_host = other_origin.replace("127.0.0.1", "localhost")
    connector = await make(
        allow_hosts=[origin.removeprefix("http://"), other_host.removeprefix("http://")],
        calls={"hop": call("/redirect", params={"to": {}})},
    )
    result = await run(connector, "hop", to=f"{other_host}/api/echo")
    assert api.received[-1].headers["Authorization"] == f"Bearer {CANARY}"
    assert elsewhere.paths() == ["/api/echo"]
    assert "Authorization" not in elsewhere.received[0].headers
    assert "Authorization" not in data_of(result)["headers"]
    same_origin = await run(connector, "hop", to="/api/whoami")
    assert same_origin.data == {"user": "lam"}


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_outside_the_allow_list_is_not_followed(
    make: Make, other: tuple[HttpService, str], status: int
) -> None:
    """A redirect to a port the allow-list leaves out fails naming the host; nothing reaches it."""
    elsewhere, other_origin = other
    connector = await make(
        calls={"hop": call("/redirect", params={"to": {}, "status": {"type": "integer"}})}
    )
    with pytest.raises(ActionFailed) as error:
        await run(connector, "hop", to=f"{other_origin}/api/echo", status=status)
    port = other_origin.rsplit(":", 1)[1]
    assert (
        f"redirect 1 to '{other_origin}/api/echo' not followed: host 127.0.0.1:{port} is not"
        in str(error.value)
    )
    assert "allow-list of connector 'api'" in str(error.value)
    assert not isinstance(error.value, RetryableError)
    assert elsewhere.received == []


async def test_redirects_stop_after_the_limit(make: Make, service: tuple[HttpService, str]) -> None:
    """A redirect loop ends after max_redirects hops with a clear failure."""
    connector = await make(max_redirects=3, calls={"loop": call("/redirect")})
    with pytest.raises(ActionFailed, match="stopped after 3 redirects"):
        await run(connector, "loop")
    assert len(service[0].received) == 4


# Failures


async def test_a_5xx_is_retryable_for_get_but_not_for_post(
    make: Make, service: tuple[HttpService, str]
) -> None:
    """An idempotent GET that gets a 500 asks for a retry; a POST reports it and is not repeated."""
    connector = await make(
        calls={
            "get": call("/flaky/{key}", params={"key": {}}),
            "post": call("/flaky/{key}", "POST", params={"key": {}}),
        }
    )
    with pytest.raises(
        RetryableError, match=r"GET /api/flaky/a: HTTP 500 Internal Server Error: \{\"error\""
    ):
        await run(connector, "get", key="a")
    with pytest.raises(ActionFailed) as error:
        await run(connector, "post", key="b")
    assert not error.value.retryable
    assert "not retried, as this POST is not idempotent" in str(error.value)


async def test_a_hanging_call_times_out_within_both_bounds(
    make: Make, service: tuple[HttpService, str]
) -> None:
    """A call stops at its own timeout, and earlier when the executor allows less."""
    connector = await make(calls={"hang": call("/hang", timeout=0.3), "hang_long": call("/hang")})
    with pytest.raises(RetryableError, match=r"GET /api/hang: no response within 0.3s"):
        await run(connector, "hang")
    assert service[0].hanging.is_set()
    with pytest.raises(RetryableError, match=r"no response within 0.45s"):
        await run(connector, "hang_long", budget=0.5)


@pytest.mark.parametrize("declared", [False, True])
async def test_a_body_over_the_cap_fails_without_being_kept(make: Make, declared: bool) -> None:
    """A 10 MB body stops the read at the 1 MiB cap, streamed or announced by Content-Length."""
    connector = await make(calls={"big": call("/big" + ("?declared=1" if declared else ""))})
    with pytest.raises(
        ActionFailed, match="the response is larger than 1048576 bytes; nothing was kept"
    ):
        await run(connector, "big")


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/bad-utf8", "the response (text/plain) is not valid utf-8 text (bad byte at offset 8)"),
        ("/not-json", "the response says it is JSON but is not"),
        ("/missing", 'HTTP 404 Not Found: {"error": "no such service"}'),
    ],
)
async def test_unusable_responses_fail_clearly(make: Make, path: str, problem: str) -> None:
    """Invalid UTF-8, JSON that is not, and a 4xx each fail with what was wrong, not retried."""
    connector = await make(calls={"c": call(path)})
    with pytest.raises(ActionFailed) as error:
        await run(connector, "c")
    assert problem in str(error.value)
    assert not error.value.retryable


async def test_a_text_response_is_the_output(make: Make) -> None:
    """A text/plain body is returned as it is, after the status."""
    connector = await make(calls={"c": call("/text")})
    assert (await run(connector, "c")).output == "200 OK\nall good\n"


# Secrets


async def test_the_token_never_appears_in_output_data_or_errors(
    make: Make, service: tuple[HttpService, str]
) -> None:
    """A service echoing the bearer token back, in a success or a 401, shows only ***."""
    connector = await make(calls={"echo": call("/echo"), "who": call("/whoami")})
    echoed = await run(connector, "echo")
    assert data_of(echoed)["headers"]["Authorization"] == "Bearer ***"
    assert no_canary(echoed.output, echoed.data)
    service[0].token = "another-token"
    with pytest.raises(ActionFailed) as error:
        await run(connector, "who")
    assert "HTTP 401 Unauthorized" in str(error.value) and "Bearer ***" in str(error.value)
    assert no_canary(str(error.value))


async def test_basic_and_header_credentials_are_masked_in_every_form(
    make: Make, service: tuple[HttpService, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Basic auth's password and its base64 form, and a header secret, never come back."""
    secret_file = tmp_path / "password"
    secret_file.write_text(CANARY + "\n", encoding="utf-8")
    basic = await make(
        auth={"type": "basic", "username": "lam", "password": f"file:{secret_file}"},
        calls={"echo": call("/echo")},
    )
    encoded = base64.b64encode(f"lam:{CANARY}".encode()).decode()
    result = await run(basic, "echo")
    assert service[0].received[-1].headers["Authorization"] == f"Basic {encoded}"
    assert encoded not in result.output and no_canary(result.output, result.data)
    keyed = await make(
        "keyed",
        auth={"type": "header", "name": "X-Api-Key", "value": f"env:{TOKEN_ENV}"},
        calls={"echo": call("/echo")},
    )
    result = await run(keyed, "echo")
    assert service[0].received[-1].headers["X-Api-Key"] == CANARY
    assert data_of(result)["headers"]["X-Api-Key"] == "***"


# Dry run


async def test_dry_run_describes_or_asks_the_api_or_is_refused(
    make: Make, service: tuple[HttpService, str]
) -> None:
    """'describe' sends nothing; a declared switch is sent to the API; without dry_run, none."""
    api, origin = service
    params: dict[str, Any] = {"service": {}, "reason": {}}
    connector = await make(
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
    described = await run(connector, "describe", dry_run=True, service="web", reason="test")
    assert api.received == []
    assert described.output == (
        f"dry run: would send POST {origin}/api/services/web/restart (plus bearer credentials)\n"
        'body: {"reason":"test"}'
    )
    assert no_canary(described.output, described.data)
    switched = await run(connector, "switch", dry_run=True, service="web", reason="test")
    assert api.paths() == ["/api/services/web/restart?dryRun=true"]
    assert data_of(switched)["dry_run"] is True
    with pytest.raises(ActionFailed, match="has no dry-run mode; nothing was sent"):
        await run(connector, "none", dry_run=True, service="web", reason="test")
    assert len(api.received) == 1


async def test_a_closed_connector_sends_nothing(
    make: Make, service: tuple[HttpService, str]
) -> None:
    """After aclose the shared session is gone and a call fails instead of opening another."""
    connector = await make(calls={"c": call("/text")})
    await connector.aclose()
    with pytest.raises(ActionFailed, match="is not started; nothing was sent"):
        await run(connector, "c")
    assert service[0].received == []


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


# Through the engine


@pytest.fixture
async def http_engine(
    make: Make, service: tuple[HttpService, str], tmp_path: Path
) -> AsyncIterator[Engine]:
    """The engine with an http connector 'api' and a policy that lets alice run it in staging."""
    connector = await make(
        base_url=None,
        openapi=service[1] + "/openapi.json",
        operations=["getService"],
        calls={
            "flaky_get": call(
                service[1] + "/api/flaky/{key}",
                params={"key": {}, "fail": {"type": "integer", "in": "query"}},
            ),
            "flaky_post": call(
                service[1] + "/api/flaky/{key}",
                "POST",
                params={"key": {}, "fail": {"type": "integer", "in": "query"}},
            ),
        },
    )
    policy = write_policy(
        tmp_path / "policies",
        "g, user:alice, role:developer, *\np, role:developer, staging, api.*, *, run, allow\n",
    )
    store = await SqliteStore.open(tmp_path / "home" / "lam.db")
    catalog = Catalog([connector])
    yield Engine(
        store=store,
        policy=Policy.load(policy),
        catalog=catalog,
        planner=AliasPlanner(),
        options=EngineOptions(execution=ExecutionOptions(max_attempts=3, backoff_base=0.001)),
        redactor=Redactor((CANARY,)),
    )
    await store.aclose()


async def test_an_http_action_planned_from_text_runs_and_is_audited(
    http_engine: Engine, service: tuple[HttpService, str]
) -> None:
    """'run api.get_service service=web' plans, runs against the service and is audited."""
    record = await http_engine.ask(
        Request(text="run api.get_service service=web in staging", requester="user:alice")
    )
    assert record.state == "succeeded", record.reason
    assert data_of(record.results[0])["meta"]["owner"] == "ops"
    assert "status: running" in record.results[0].output
    assert service[0].paths()[-1] == "/api/services/web"
    events = [e async for e in http_engine.store.audit_events() if e.request_id == record.id]
    assert [e.kind for e in events][-3:] == ["step.started", "step.finished", "request.succeeded"]
    assert await http_engine.verify_audit() == len(events)
    assert no_canary(record.model_dump(mode="json"), [e.model_dump(mode="json") for e in events])


async def test_the_executor_retries_an_idempotent_get_but_not_a_post(
    http_engine: Engine, service: tuple[HttpService, str]
) -> None:
    """Two 500s then a 200: the GET succeeds on its third attempt; the POST fails on its first."""
    get = await http_engine.ask(
        Request(text="run api.flaky_get key=g fail=2 in staging", requester="user:alice")
    )
    assert get.state == "succeeded", get.reason
    assert (get.results[0].attempts, get.results[0].data) == (3, {"attempt": 3})
    post = await http_engine.ask(
        Request(text="run api.flaky_post key=p fail=2 in staging", requester="user:alice")
    )
    assert post.state == "failed"
    assert post.results[0].attempts == 1
    assert "not retried" in (post.results[0].error or "")
    assert service[0].attempts == {"g": 3, "p": 1}
