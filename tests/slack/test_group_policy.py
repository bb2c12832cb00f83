"""Slack user groups are policy subjects: ``group:HANDLE`` rules apply to their members."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_policy
from tests.slack.conftest import StartLam, texts

GROUP_POLICY = """\
p, group:developers, prod, test.*, *, request, allow
p, group:leads, prod, test.*, *, approve, allow
"""


async def test_group_members_ask_and_approve(start_lam: StartLam, policy_dir: Path) -> None:
    """A developer asks through their group, a lead approves through theirs, carol cannot."""
    write_policy(policy_dir, GROUP_POLICY)
    lam = await start_lam("http")
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart api", user="U0DAVE", channel="C0PROD")) == 200
    plan = await sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    assert "<!subteam^S0LEADS>" in texts(plan)
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert record.request.groups == ("group:developers",)
    for user in ("U0CAROL", "U0BOB"):
        await lam.click(
            "lam.approve", record.id, user=user, channel="C0PROD", message_ts=plan.args["ts"]
        )
    await sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
    await lam.idle()
    answers = [p.body["text"] for p in sim.response_posts]
    assert "may not approve" in answers[0] and "You approved" in answers[1]
