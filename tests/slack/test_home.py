"""App Home shows a person's recent requests and the approvals waiting for them."""

from __future__ import annotations

import json

from tests.slack.conftest import Lam, texts


def home_opened(user: str) -> dict[str, str]:
    return {"type": "app_home_opened", "user": user, "tab": "home", "event_ts": "1.000001"}


async def test_home_tabs(lam: Lam) -> None:
    """The requester sees their request; a lead sees it waiting with buttons; carol sees neither."""
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart api", channel="C0PROD")) == 200
    await sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    await lam.idle()
    [record] = await lam.engine.store.history()

    for user in ("U0ALICE", "U0BOB", "U0CAROL"):
        assert await lam.event(home_opened(user)) == 200
    await lam.idle()
    alice, bob, carol = (json.dumps(sim.home_views[u]) for u in ("U0ALICE", "U0BOB", "U0CAROL"))
    assert record.id in alice and "Waiting for your approval* (0)" in alice
    assert "Waiting for your approval* (1)" in bob and '"lam.approve"' in bob
    assert "You have not asked yet" in bob
    assert record.id not in carol and "Nothing is waiting for you" in carol


async def test_approve_from_home(lam: Lam) -> None:
    """A click on Home's Approve works like one on the plan, answered in the approver's DM."""
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart api", channel="C0PROD")) == 200
    await sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    await lam.idle()
    [record] = await lam.engine.store.history()
    click = sim.block_actions_payload("lam.approve", record.id, user="U0BOB")
    click.pop("channel"), click.pop("message"), click.pop("response_url")
    click["container"] = {"type": "view", "view_id": "V0HOME"}
    status, _ = await lam.interaction(click)
    assert status == 200
    await sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
    await lam.idle()
    told = [c for c in sim.calls_to("chat.postMessage") if c.args.get("channel") == "U0BOB"]
    assert told and "You approved" in texts(told[-1])
    assert "Waiting for your approval* (0)" in json.dumps(sim.home_views["U0BOB"])
