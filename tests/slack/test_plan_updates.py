"""A plan message follows its request without an update per event: resting states show at once."""

from __future__ import annotations

from tests.slack.conftest import GatedConnector, StartLam, texts


async def test_updates_are_coalesced_but_the_end_shows_at_once(
    start_lam: StartLam, connector: GatedConnector
) -> None:
    """Within the update interval the passing states make no update; the finish makes one now."""
    lam = await start_lam("http", update_interval=30.0)
    sim = lam.sim
    mention = sim.app_mention("deploy api", channel="C0OPS")
    assert await lam.event(mention) == 200
    placeholder = await sim.wait_for_call(
        "chat.postMessage", lambda c: c.args.get("thread_ts") == mention["ts"]
    )
    plan_ts = placeholder.response["ts"]
    await connector.deploying.wait()
    await sim.wait_for_call("chat.update", lambda c: c.args.get("ts") == plan_ts)
    connector.gate.set()
    # Far sooner than the 30-second interval: a finished request is shown at once.
    await sim.wait_for_call(
        "chat.update",
        lambda c: c.args.get("ts") == plan_ts and "finished successfully" in texts(c),
    )
    await lam.idle()
    updates = [c for c in sim.calls_to("chat.update") if c.args.get("ts") == plan_ts]
    assert len(updates) == 2
