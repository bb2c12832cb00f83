"""A 40,000-character message is answered with the limit and never becomes a request."""

from __future__ import annotations

from tests.slack.conftest import Lam


async def test_huge_mention_is_refused_with_a_reason(lam: Lam) -> None:
    """The asker alone is told the limit; nothing is stored, planned or run."""
    sim = lam.sim
    mention = sim.app_mention("restart api " + "x" * 40_000, channel="C0OPS")
    assert await lam.event(mention) == 200
    await lam.idle()
    [told] = [e for e in sim.ephemerals if e.user == "U0ALICE"]
    assert "40," in told.text and "4,000" in told.text and told.thread_ts == mention["ts"]
    assert await lam.engine.store.history() == []
    assert sim.calls_to("chat.postMessage") == []


async def test_empty_mention_asks_what_is_needed(lam: Lam) -> None:
    """A bare mention gets a hint, not a request."""
    assert await lam.event(lam.sim.app_mention("   ", channel="C0OPS")) == 200
    await lam.idle()
    [told] = lam.sim.ephemerals
    assert "Tell me what you need" in told.text
    assert await lam.engine.store.history() == []
