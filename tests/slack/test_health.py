"""``/healthz`` and ``/readyz`` answer over HTTP and, on their own port, in Socket Mode."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.slack.conftest import Lam


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_health_and_readiness(lam: Lam) -> None:
    """Both endpoints answer 200 with the checks; Socket Mode adds the connection."""
    assert await get(lam.base_url + "/healthz") == (200, {"status": "ok"})
    status, ready = await get(lam.base_url + "/readyz")
    assert status == 200 and ready["checks"]["store"] == "ok" and ready["checks"]["policy"] == "ok"
    if lam.transport == "socket":
        assert ready["checks"]["slack"] == "ok"
        async with (
            aiohttp.ClientSession() as session,
            session.post(lam.base_url + "/slack/events", data="{}") as response,
        ):
            assert response.status in (404, 405)


async def test_not_ready_when_the_store_is_down(lam_http: Lam) -> None:
    """With the store closed, readiness is 503 naming the store, and health stays 200."""
    await lam_http.engine.store.aclose()
    status, ready = await get(lam_http.base_url + "/readyz")
    assert status == 503 and ready["checks"]["store"].startswith("unreachable")
    assert (await get(lam_http.base_url + "/healthz"))[0] == 200
