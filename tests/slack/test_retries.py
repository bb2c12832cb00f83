"""Slack's retries, duplicate deliveries and replays never make a second request."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from tests.slack.conftest import Lam, texts


async def test_retried_event_makes_one_request(lam: Lam) -> None:
    """A redelivery with X-Slack-Retry-Num and the same event_id is dropped after the first."""
    sim = lam.sim
    mention = sim.app_mention("restart api", channel="C0OPS")
    assert await lam.event(mention, event_id="Ev0RETRY") == 200
    for attempt in (1, 2, 3):
        assert await lam.event(mention, event_id="Ev0RETRY", retry=attempt) == 200
    await sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
    await lam.idle()
    assert len(await lam.engine.store.history()) == 1
    assert len([c for c in sim.calls_to("chat.postMessage") if "Planning" in texts(c)]) == 1


async def test_one_message_under_two_event_ids_is_one_request(lam: Lam) -> None:
    """A message delivered under two event ids is one request: the message itself is the key."""
    sim = lam.sim
    dm = sim.direct_message("echo hello", user="U0ALICE")
    assert await lam.event(dm, event_id="Ev0FIRST") == 200
    assert await lam.event(dm, event_id="Ev0SECOND") == 200
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert record.request.channel == dm["channel"] and record.request.text == "echo hello"


async def test_replayed_signed_request_creates_nothing(lam_http: Lam) -> None:
    """The same signed bytes sent again inside five minutes are answered 200 and ignored."""
    sim, url = lam_http.sim, lam_http.events_url
    body = json.dumps(sim.event_callback(sim.app_mention("restart api", channel="C0OPS")))
    headers = sim.signer.headers(body)
    first = await sim.send_raw(url, body, content_type="application/json", headers=headers)
    await lam_http.idle()
    again = [
        await sim.send_raw(url, body, content_type="application/json", headers=headers)
        for _ in range(3)
    ]
    assert first.status == 200 and [d.status for d in again] == [200, 200, 200]
    await lam_http.idle()
    assert len(await lam_http.engine.store.history()) == 1


async def test_replayed_click_changes_nothing(lam_http: Lam) -> None:
    """A replayed approval click is ignored: no second decision, no second answer."""
    sim, url = lam_http.sim, lam_http.events_url
    assert await lam_http.event(sim.app_mention("restart api", channel="C0PROD")) == 200
    waiting = await sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    await lam_http.idle()
    [record] = await lam_http.engine.store.history()
    payload = sim.block_actions_payload(
        "lam.approve", record.id, user="U0BOB", channel="C0PROD", message_ts=waiting.args["ts"]
    )
    body = urlencode({"payload": json.dumps(payload)})
    headers = sim.signer.headers(body)
    assert (await sim.send_raw(url, body, headers=headers)).status == 200
    await lam_http.idle()
    answers = len(sim.response_posts)
    assert (await sim.send_raw(url, body, headers=headers)).status == 200
    await lam_http.idle()
    assert len(sim.response_posts) == answers
    stored = await lam_http.engine.store.get(record.id)
    assert [a.approver for a in stored.approvals] == ["user:T0LAMTEST/U0BOB"]
