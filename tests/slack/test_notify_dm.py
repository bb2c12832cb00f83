"""With ``LAM_APPROVER_NOTIFY=dm`` each approver gets a DM with the buttons, once."""

from __future__ import annotations

from tests.slack.conftest import StartLam, buttons, texts


async def test_each_approver_is_messaged_once(start_lam: StartLam) -> None:
    """Bob and erin (leads who may approve) get a DM; the requester and carol do not."""
    lam = await start_lam("http", notify="dm")
    sim = lam.sim
    mention = sim.app_mention("restart api", channel="C0PROD")
    assert await lam.event(mention) == 200
    dms = await sim.wait_for_calls(
        "chat.postMessage", 2, lambda c: "needs your approval" in texts(c)
    )
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert sorted(c.args["channel"] for c in dms) == ["U0BOB", "U0ERIN"]
    for dm in dms:
        assert buttons(dm) == [("lam.approve", record.id), ("lam.reject", record.id)]
        assert "/archives/C0PROD/p" in texts(dm)
    assert not [
        c
        for c in sim.calls_to("chat.postMessage")
        if c.args.get("thread_ts") and "needs your approval" in texts(c)
    ]

    # Approving from the DM works like approving on the plan.
    status = await lam.click(
        "lam.approve", record.id, user="U0ERIN", channel="D0ERIN", message_ts=None
    )
    assert status == 200
    await sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
    await lam.idle()
    assert (
        len([c for c in sim.calls_to("chat.postMessage") if "needs your approval" in texts(c)]) == 2
    )
