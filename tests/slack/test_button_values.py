"""A button whose value is not a known request id is answered, never acted on."""

from __future__ import annotations

from tests.slack.conftest import Lam, texts


async def test_unknown_and_garbage_values_are_answered(lam: Lam) -> None:
    """Unknown ids, garbage, huge values and empty values each get an ephemeral reason."""
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart api", channel="C0PROD")) == 200
    plan = await sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    await lam.idle()
    values = ["abcdef123456", "../../etc/passwd", "x" * 2000, "", "ｒｅｑ"]
    for value in values:
        for action in ("lam.approve", "lam.reject"):
            status = await lam.click(
                action, value, user="U0BOB", channel="C0PROD", message_ts=plan.args["ts"]
            )
            assert status == 200
    await lam.idle()
    answers = [str(post.body["text"]) for post in sim.response_posts]
    assert len(answers) == 2 * len(values)
    assert all(a.startswith(":no_entry: Nothing changed") for a in answers)
    assert sum("no request with id 'abcdef123456'" in a for a in answers) == 2
    assert sum("does not name a request" in a for a in answers) == 2 * (len(values) - 1)
    assert sim.views == {}
    [record] = await lam.engine.store.history()
    assert record.state == "awaiting_approval" and record.approvals == ()
