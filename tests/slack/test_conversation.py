"""The whole conversation: ask, plan, approval by another user, progress, result, audit."""

from __future__ import annotations

import re

from tests.slack.conftest import GatedConnector, Lam, buttons, texts
from tests.support.slack import ApiCall


def updates_of(lam: Lam, channel: str, ts: str) -> list[ApiCall]:
    return [
        call
        for call in lam.sim.calls_to("chat.update")
        if call.args.get("channel") == channel and call.args.get("ts") == ts
    ]


async def test_ask_approve_progress_result_audit(lam: Lam, connector: GatedConnector) -> None:
    """A prod request is planned in its thread, approved by a lead, run, reported and audited."""
    sim = lam.sim
    mention = sim.app_mention("please deploy api", user="U0ALICE", channel="C0PROD")
    assert await lam.event(mention) == 200

    placeholder = await sim.wait_for_call(
        "chat.postMessage", lambda c: c.args.get("thread_ts") == mention["ts"]
    )
    plan_ts = placeholder.response["ts"]
    waiting = await sim.wait_for_call(
        "chat.update",
        lambda c: c.args.get("ts") == plan_ts and "awaiting approval" in texts(c),
    )
    [(approve_id, request_id), (reject_id, same_id)] = buttons(waiting)
    assert (approve_id, reject_id, same_id) == ("lam.approve", "lam.reject", request_id)
    plan = texts(waiting)
    assert "test.deploy" in plan and "service=`api`" in plan and "risk *write*" in plan
    assert "needs approval" in plan and "p, role:developer, prod, test.*, *, request, allow" in plan
    assert "<@U0ALICE>" in plan and "in *prod*" in plan and "needs 1 more approval" in plan
    assert "<!subteam^S0LEADS>" in plan and "<!date^" in plan

    notice = await sim.wait_for_call(
        "chat.postMessage",
        lambda c: c.args.get("thread_ts") == mention["ts"] and "needs your approval" in texts(c),
    )
    assert "<!subteam^S0LEADS>" in texts(notice) and request_id in texts(notice)

    clicked = await lam.click(
        "lam.approve", request_id, user="U0BOB", channel="C0PROD", message_ts=plan_ts
    )
    assert clicked == 200
    await connector.deploying.wait()
    await sim.wait_for_call(
        "chat.update", lambda c: c.args.get("ts") == plan_ts and "running" in texts(c)
    )
    connector.gate.set()
    finished = await sim.wait_for_call(
        "chat.update",
        lambda c: c.args.get("ts") == plan_ts and "finished successfully" in texts(c),
    )
    assert re.search(r"succeeded in \d+\.\d\ds", texts(finished))
    assert "approved by <@U0BOB>" in texts(finished) and buttons(finished) == []

    result = await sim.wait_for_call(
        "chat.postMessage",
        lambda c: c.args.get("thread_ts") == mention["ts"] and "deployed api to prod" in texts(c),
    )
    assert request_id in texts(result)
    told = await sim.wait_for_response_post(lambda p: "You approved" in p.body.get("text", ""))
    assert told.body["response_type"] == "ephemeral" and request_id in told.body["text"]

    statuses = [
        status
        for call in updates_of(lam, "C0PROD", plan_ts)
        for status in ("waiting for approval", "running", "succeeded in")
        if status in texts(call)
    ]
    assert statuses == sorted(
        statuses, key=["waiting for approval", "running", "succeeded in"].index
    )

    events = [event async for event in lam.engine.store.audit_events()]
    last = events[-1]
    assert last.kind == "request.succeeded"
    await sim.wait_for_call(
        "chat.postMessage",
        lambda c: c.args.get("channel") == "C0AUDIT" and f"`{last.seq}`" in texts(c),
    )
    posted = "\n".join(
        str(call.args["text"])
        for call in sim.calls_to("chat.postMessage")
        if call.args.get("channel") == "C0AUDIT" and call.ok
    )
    seqs = [int(seq) for seq in re.findall(r"^`(\d+)`", posted, re.MULTILINE)]
    assert seqs == [event.seq for event in events]
    kinds = re.findall(r"^`\d+` \S+ \*(\S+)\*", posted, re.MULTILINE)
    assert kinds == [event.kind for event in events]
    assert connector.calls["test.deploy"] == 1
