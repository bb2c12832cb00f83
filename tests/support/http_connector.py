"""Fixtures for the http connector tests: the service under test and connectors on it.

A pytest plugin, loaded by ``tests/conftest.py``; test modules import the helpers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from connectors.http import HttpConnector, HttpSettings
from tests.support.http_service import HttpService, serving

CANARY = "canary-3f9a-secret-token"
"""The service's bearer token: it must never come back out of LAM."""
TOKEN_ENV = "LAM_TEST_HTTP_TOKEN"
"""The environment variable the connectors' ``env:`` token reference reads."""

MakeHttpConnector = Callable[..., Awaitable[HttpConnector]]


@pytest.fixture
async def http_service() -> AsyncIterator[tuple[HttpService, str]]:
    """The API under test, expecting the canary as its bearer token; and its origin."""
    api = HttpService(token=CANARY)
    async with serving(api) as origin:
        yield api, origin


@pytest.fixture
async def make_http_connector(
    http_service: tuple[HttpService, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MakeHttpConnector]:
    """Builds and starts an http connector on the service (bearer canary unless told)."""
    monkeypatch.setenv(TOKEN_ENV, CANARY)
    started: list[HttpConnector] = []

    async def build(name: str = "api", **settings: Any) -> HttpConnector:
        defaults = {
            "base_url": http_service[1] + "/api",
            "auth": {"type": "bearer", "token": "env:" + TOKEN_ENV},
        }
        connector = HttpConnector(name, HttpSettings.model_validate({**defaults, **settings}))
        started.append(connector)
        await connector.start(lambda: None)
        return connector

    yield build
    for connector in started:
        await connector.aclose()


def call(url: str, method: str = "GET", **fields: Any) -> dict[str, Any]:
    """A declared call's settings: ``method url`` with ``fields`` added."""
    return {"description": f"{method} {url}", "method": method, "url": url, **fields}


def no_canary(*texts: object) -> bool:
    """Whether none of ``texts``, as JSON, holds the service's token."""
    return all(CANARY not in json.dumps(text) for text in texts)
