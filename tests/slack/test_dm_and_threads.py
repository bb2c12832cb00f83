"""A DM to LAM or a reply in a LAM thread starts a request; other replies are left alone."""

from __future__ import annotations

from typing import Any

from tests.slack.conftest import Lam, texts
from tests.support.slack import TEAM_ID


def channel_reply(text: str, ts: str, thread_ts: str) -> dict[str, Any]:
    """A plain ``message`` event: dave replying in a thread of #ops."""
    return {
        "type": "message",
        "user": "U0DAVE",
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "thread_ts": thread_ts,
        "team": TEAM_ID,
        "channel": "C0OPS",
        "channel_type": "channel",
    }


async def test_direct_message_starts_a_request(lam: Lam) -> None:
    """A DM is planned, run and answered in the DM."""
    dm = lam.sim.direct_message("restart api", user="U0ALICE")
    assert await lam.event(dm) == 200
    done = await lam.sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
    assert done.args["channel"] == "D0ALICE"
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert record.request.source == "slack" and record.request.thread == dm["ts"]


async def test_reply_in_a_lam_thread_starts_a_request(lam: Lam) -> None:
    """After a mention, a plain reply in its thread is a new request; a reply elsewhere is not."""
    sim = lam.sim
    mention = sim.app_mention("restart api", channel="C0OPS")
    assert await lam.event(mention) == 200
    await sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
    await lam.idle()

    reply = channel_reply("restart web", "2.000001", mention["ts"])
    elsewhere = channel_reply("restart db", "2.000002", "1.000009")
    bot_echo = dict(reply, bot_id="B0OTHER", ts="2.000003")
    edited = dict(reply, subtype="message_changed", ts="2.000004")
    for event in (reply, elsewhere, bot_echo, edited):
        assert await lam.event(event) == 200
    await sim.wait_for_call(
        "chat.update", lambda c: "restart web" in texts(c) and "finished successfully" in texts(c)
    )
    await lam.idle()
    texts_asked = sorted(r.request.text for r in await lam.engine.store.history())
    assert texts_asked == ["restart api", "restart web"]
