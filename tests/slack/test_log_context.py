"""Log lines written while LAM handles a Slack delivery name the request, channel and user."""

from __future__ import annotations

from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tests.slack.conftest import Lam, texts


async def test_request_log_lines_carry_request_channel_and_user(lam: Lam) -> None:
    """The engine's events for a mention carry its request id, channel and Slack user."""
    # capture_logs drops the configured processors; the context is merged as configured.
    with capture_logs(processors=[merge_contextvars]) as logs:
        mention = lam.sim.app_mention("restart api", channel="C0OPS", user="U0ALICE")
        assert await lam.event(mention) == 200
        await lam.sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
        await lam.idle()
    [record] = await lam.engine.store.history()
    scoped = [line for line in logs if line.get("request_id") == record.id]
    assert scoped, "no log line was bound to the request"
    for line in scoped:
        assert line["slack_channel"] == "C0OPS", line
        assert line["slack_user"].endswith("/U0ALICE"), line
