"""Reject opens a modal asking why; the reason is required and ends the request."""

from __future__ import annotations

from tests.slack.conftest import Lam, texts


async def test_reject_with_a_reason(lam: Lam) -> None:
    """A lead's Reject opens the modal; an empty reason is sent back, a real one rejects."""
    sim = lam.sim
    mention = sim.app_mention("restart api", channel="C0PROD")
    assert await lam.event(mention) == 200
    plan = await sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    await lam.idle()
    [record] = await lam.engine.store.history()
    plan_ts = str(plan.args["ts"])

    assert (
        await lam.click("lam.reject", record.id, user="U0BOB", channel="C0PROD", message_ts=plan_ts)
        == 200
    )
    opened = await sim.wait_for_call("views.open")
    view = opened.response["view"]
    assert view["callback_id"] == "lam.reject" and record.id in view["private_metadata"]

    empty = sim.view_submission_payload(
        "lam.reject",
        {"reason": {"reason_input": "  "}},
        user="U0BOB",
        private_metadata=view["private_metadata"],
        view_id=view["id"],
    )
    status, body = await lam.interaction(empty)
    assert status == 200 and body["response_action"] == "errors" and "reason" in body["errors"]

    filled = sim.view_submission_payload(
        "lam.reject",
        {"reason": {"reason_input": "not during the <!here> freeze"}},
        user="U0BOB",
        private_metadata=view["private_metadata"],
        view_id=view["id"],
    )
    status, body = await lam.interaction(filled)
    assert status == 200 and not body
    rejected = await sim.wait_for_call(
        "chat.update",
        lambda c: (
            c.args.get("ts") == plan_ts and "Request" in texts(c) and ": rejected" in texts(c)
        ),
    )
    shown = texts(rejected)
    assert "rejected by <@U0BOB>: not during the &lt;!here&gt; freeze" in shown
    await lam.idle()
    stored = await lam.engine.store.get(record.id)
    assert stored.state == "rejected" and stored.reason == "not during the <!here> freeze"
    assert any("You rejected request" in e.text for e in sim.ephemerals if e.user == "U0BOB")


async def test_reject_by_a_non_approver_opens_nothing(lam: Lam) -> None:
    """Someone who may not reject is told so at the click, before typing any reason."""
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart api", channel="C0PROD")) == 200
    plan = await sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert (
        await lam.click(
            "lam.reject", record.id, user="U0CAROL", channel="C0PROD", message_ts=plan.args["ts"]
        )
        == 200
    )
    await lam.idle()
    assert sim.views == {}
    [post] = sim.response_posts
    assert "may not approve" in post.body["text"]
    assert (await lam.engine.store.get(record.id)).state == "awaiting_approval"
