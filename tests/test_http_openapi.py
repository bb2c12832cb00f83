"""The http connector's OpenAPI import against a real aiohttp service: operations chosen by
id or tag become typed actions, what cannot be imported fails its instance alone, and
imported operations and declared calls run through the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bot.engine import Engine
from bot.models import Request
from connectors import ConnectorConfig, start_connectors
from connectors.http import HttpConnector
from tests.conftest import EngineFactory
from tests.support.actions import action_context
from tests.support.audit_trail import events_of
from tests.support.connector_actions import data_of, run_action
from tests.support.http_connector import CANARY, TOKEN_ENV, MakeHttpConnector, call, no_canary
from tests.support.http_service import HttpService, openapi_document
from tests.support.policies import write_policy

# OpenAPI import


async def test_openapi_operations_chosen_by_id_become_typed_actions(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """Each chosen operationId is an action whose Params follow its parameters and JSON body."""
    api, origin = http_service
    connector = await make_http_connector(
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
    result = await run_action(
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
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """Operations are chosen by tag; a nested object in the body is a typed, closed model."""
    api, origin = http_service
    connector = await make_http_connector(
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
    await run_action(
        connector,
        "put_service_config",
        service="web",
        replicas=2,
        limits={"cpu": 0.5, "memory-mb": 64},
    )
    assert api.received[-1].json == {"replicas": 2, "limits": {"cpu": 0.5, "memory-mb": 64}}
    listed = await run_action(connector, "list_services", status="stopped", limit=5)
    assert api.received[-1].raw_path == "/api/services?status=stopped&limit=5"
    assert listed.data == {
        "services": [{"name": "worker", "status": "stopped", "replicas": 0}],
        "total": 1,
    }


async def test_an_operations_risk_can_be_overridden(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """DELETE imports as destructive; operation_settings can make a GET count as a write."""
    connector = await make_http_connector(
        base_url=None,
        openapi=http_service[1] + "/openapi.json",
        operations=["deleteService", "getService"],
        operation_settings={"getService": {"risk": "write", "idempotent": False}},
    )
    risks = {a.id: (a.risk, a.idempotent) for a in connector.actions()}
    assert risks == {
        "api.delete_service": ("destructive", True),
        "api.get_service": ("write", False),
    }
    assert (await run_action(connector, "delete_service", service="web")).output == "204 No Content"


async def test_a_local_yaml_document_names_the_server_to_allow(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str], tmp_path: Path
) -> None:
    """A YAML document read from a file works, and its own server URL is allowed by default."""
    document = tmp_path / "api.yaml"
    document.write_text(
        yaml.safe_dump(openapi_document(http_service[1] + "/api")), encoding="utf-8"
    )
    connector = await make_http_connector(
        base_url=None, openapi=str(document), operations=["getService"]
    )
    result = await run_action(connector, "get_service", service="db")
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
    make_http_connector: MakeHttpConnector,
    http_service: tuple[HttpService, str],
    selection: dict[str, Any],
    problem: str,
) -> None:
    """A missing operationId or tag, or an unsupported operation, fails start and says which."""
    with pytest.raises(ValueError) as error:
        await make_http_connector(
            base_url=None, openapi=http_service[1] + "/openapi.json", **selection
        )
    assert problem in str(error.value)


async def test_a_broken_document_fails_its_instance_while_another_works(
    http_service: tuple[HttpService, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unparseable OpenAPI document fails that instance alone; the other instance runs."""
    monkeypatch.setenv(TOKEN_ENV, CANARY)
    origin = http_service[1]
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


# Through the engine


@pytest.fixture
async def connector(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> HttpConnector:
    """The engine's connector here: 'api', with an imported operation and two flaky calls."""
    return await make_http_connector(
        base_url=None,
        openapi=http_service[1] + "/openapi.json",
        operations=["getService"],
        calls={
            "flaky_get": call(
                http_service[1] + "/api/flaky/{key}",
                params={"key": {}, "fail": {"type": "integer", "in": "query"}},
            ),
            "flaky_post": call(
                http_service[1] + "/api/flaky/{key}",
                "POST",
                params={"key": {}, "fail": {"type": "integer", "in": "query"}},
            ),
        },
    )


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_policy(
        tmp_path / "policies",
        "g, user:alice, role:developer, *\np, role:developer, staging, api.*, *, run, allow\n",
    )


@pytest.fixture
def http_engine(make_engine: EngineFactory) -> Engine:
    """The engine with the connector above, masking the service's token in what it keeps."""
    return make_engine(secrets=(CANARY,))


async def test_an_http_action_planned_from_text_runs_and_is_audited(
    http_engine: Engine, http_service: tuple[HttpService, str]
) -> None:
    """'run api.get_service service=web' plans, runs against the service and is audited."""
    record = await http_engine.ask(
        Request(text="run api.get_service service=web in staging", requester="user:alice")
    )
    assert record.state == "succeeded", record.reason
    assert data_of(record.results[0])["meta"]["owner"] == "ops"
    assert "status: running" in record.results[0].output
    assert http_service[0].paths()[-1] == "/api/services/web"
    events = await events_of(http_engine, record.id)
    assert [e.kind for e in events][-3:] == ["step.started", "step.finished", "request.succeeded"]
    assert await http_engine.verify_audit() == len(events)
    assert no_canary(record.model_dump(mode="json"), [e.model_dump(mode="json") for e in events])


async def test_the_executor_retries_an_idempotent_get_but_not_a_post(
    http_engine: Engine, http_service: tuple[HttpService, str]
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
    assert http_service[0].attempts == {"g": 3, "p": 1}
