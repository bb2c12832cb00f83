"""Clicks that may not approve are answered to the clicker alone, and nothing changes."""

from __future__ import annotations

from datetime import timedelta

from tests.slack.conftest import Lam, StartLam, Transport, subject, texts


async def awaiting(lam: Lam) -> tuple[str, str]:
    """Ask for a prod restart as alice; the request id and its plan message ts."""
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart api", channel="C0PROD")) == 200
    plan = await sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    await lam.idle()
    [record] = await lam.engine.store.history()
    return record.id, str(plan.args["ts"])


async def answer_to(lam: Lam, user: str, request_id: str, plan_ts: str) -> str:
    before = len(lam.sim.response_posts)
    assert (
        await lam.click("lam.approve", request_id, user=user, channel="C0PROD", message_ts=plan_ts)
        == 200
    )
    await lam.idle()
    [post] = lam.sim.response_posts[before:]
    assert post.body["response_type"] == "ephemeral" and post.body["replace_original"] is False
    return str(post.body["text"])


async def test_non_approver_and_requester_are_refused(lam: Lam) -> None:
    """Someone no rule lets approve, and the requester, are told why; the request still waits."""
    request_id, plan_ts = await awaiting(lam)
    carol = await answer_to(lam, "U0CAROL", request_id, plan_ts)
    assert "Nothing changed" in carol and "may not approve 'test.restart' in 'prod'" in carol
    alice = await answer_to(lam, "U0ALICE", request_id, plan_ts)
    assert "you asked for request" in alice
    record = await lam.engine.store.get(request_id)
    assert record.state == "awaiting_approval" and record.approvals == ()


async def test_second_click_changes_nothing(lam: Lam) -> None:
    """An approver clicking again after the request ran is told it no longer waits."""
    request_id, plan_ts = await awaiting(lam)
    first = await answer_to(lam, "U0BOB", request_id, plan_ts)
    assert "You approved" in first
    again = await answer_to(lam, "U0BOB", request_id, plan_ts)
    assert "Nothing changed" in again and "not awaiting approval" in again
    record = await lam.engine.store.get(request_id)
    assert [a.approver for a in record.approvals] == [subject("U0BOB")]


async def test_plan_shows_expiry_without_a_click(start_lam: StartLam, transport: Transport) -> None:
    """When the approval window closes, the plan message says so and loses its buttons."""
    lam: Lam = await start_lam(
        transport, engine_options={"approval_ttl": timedelta(microseconds=1)}
    )
    request_id, plan_ts = await awaiting(lam)
    expired = await lam.sim.wait_for_call(
        "chat.update",
        lambda c: c.args.get("ts") == plan_ts and "expired without approval" in texts(c),
    )
    assert "lam.approve" not in str(expired.args.get("blocks"))
    assert (await lam.engine.store.get(request_id)).state == "expired"


async def test_click_after_expiry_changes_nothing(
    start_lam: StartLam, transport: Transport
) -> None:
    """A click after the approval window closed is refused, and the plan shows it expired."""
    lam: Lam = await start_lam(
        transport, engine_options={"approval_ttl": timedelta(microseconds=1)}
    )
    request_id, plan_ts = await awaiting(lam)
    answer = await answer_to(lam, "U0BOB", request_id, plan_ts)
    assert "Nothing changed" in answer and "expired" in answer
    await lam.sim.wait_for_call(
        "chat.update",
        lambda c: c.args.get("ts") == plan_ts and "expired without approval" in texts(c),
    )
    record = await lam.engine.store.get(request_id)
    assert record.state == "expired" and record.approvals == ()
