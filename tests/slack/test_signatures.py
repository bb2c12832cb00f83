"""Forged, stale, altered or unparsable HTTP deliveries are refused before bolt; nothing changes."""

from __future__ import annotations

import json

from tests.slack.conftest import Lam
from tests.support.slack import SlackSigner


async def assert_nothing_happened(lam: Lam) -> None:
    await lam.idle()
    assert [c.method for c in lam.sim.calls if c.method.startswith(("chat.", "views."))] == []
    assert await lam.engine.store.history() == []


async def test_bad_signatures_are_401(lam_http: Lam) -> None:
    """Bad or missing signatures, stale, future or non-numeric timestamps, altered bodies: 401."""
    sim, url = lam_http.sim, lam_http.events_url
    body = json.dumps(sim.event_callback(sim.app_mention("deploy api", channel="C0PROD")))
    forged = SlackSigner("not-the-secret").headers(body)
    altered = sim.signer.headers(body.replace("deploy", "purge"))
    good = sim.signer.headers(body)
    deliveries = [
        await sim.send_raw(url, body, content_type="application/json", headers=forged),
        await sim.send_raw(url, body, content_type="application/json", sign=False),
        await sim.send_raw(url, body, content_type="application/json", timestamp=0),
        await sim.send_raw(url, body, content_type="application/json", timestamp=2**33),
        await sim.send_raw(url, body, content_type="application/json", timestamp="soon"),
        await sim.send_raw(url, body, content_type="application/json", timestamp="１７"),
        await sim.send_raw(url, body, content_type="application/json", headers=altered),
        await sim.send_raw(
            url,
            body,
            content_type="application/json",
            headers={**good, "X-Slack-Signature": good["X-Slack-Signature"].upper()},
        ),
    ]
    assert [d.status for d in deliveries] == [401] * len(deliveries)
    assert "timestamp" in deliveries[4].body.lower()
    await assert_nothing_happened(lam_http)


async def test_unparsable_bodies_are_400(lam_http: Lam) -> None:
    """A correctly signed body that is not JSON, not a form, or of another type is a 400."""
    sim, url = lam_http.sim, lam_http.events_url
    cases: list[tuple[str | bytes, str]] = [
        ("{not json", "application/json"),
        ("payload=%7Bnot+json", "application/x-www-form-urlencoded"),
        ("[1, 2]", "application/json"),
        ("<xml/>", "text/xml"),
        (b"\xff\xfe\x00", "application/json"),
        ("a=1&a=2", "application/x-www-form-urlencoded"),
    ]
    for body, content_type in cases:
        delivery = await sim.send_raw(url, body, content_type=content_type)
        assert delivery.status == 400, (body, delivery.body)
    await assert_nothing_happened(lam_http)


async def test_oversized_body_is_413(lam_http: Lam) -> None:
    """A body past one megabyte is refused without being read through."""
    body = json.dumps({"type": "event_callback", "padding": "x" * (1024 * 1024 + 1)})
    delivery = await lam_http.sim.send_raw(
        lam_http.events_url, body, content_type="application/json"
    )
    assert delivery.status == 413
    await assert_nothing_happened(lam_http)
