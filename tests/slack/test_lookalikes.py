"""Unicode lookalikes and hidden characters cannot smuggle an environment or an action past LAM."""

from __future__ import annotations

from tests.slack.conftest import GatedConnector, Lam, texts


async def test_fullwidth_prod_in_a_staging_channel_is_refused(
    lam: Lam, connector: GatedConnector
) -> None:
    """'ｐｒｏｄ' folds to 'prod', which a channel bound to staging may not act on."""
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart api in ｐｒｏｄ", channel="C0OPS")) == 200
    ended = await sim.wait_for_call("chat.update", lambda c: "could not be planned" in texts(c))
    assert "names environment 'prod' but it was made for 'staging'" in texts(ended)
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert record.state == "unplanned" and sum(connector.calls.values()) == 0


async def test_zero_width_characters_are_refused(lam: Lam, connector: GatedConnector) -> None:
    """A request hiding a zero-width space is refused with the character named."""
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart a\u200bpi", channel="C0OPS")) == 200
    ended = await sim.wait_for_call("chat.update", lambda c: "could not be planned" in texts(c))
    assert "ZERO WIDTH SPACE" in texts(ended)
    await lam.idle()
    assert sum(connector.calls.values()) == 0


async def test_escaped_text_cannot_ping_the_channel(lam: Lam) -> None:
    """Text that looks like a channel-wide ping is shown escaped, never as a ping."""
    sim = lam.sim
    mention = sim.app_mention("echo &lt;!channel&gt; hello", channel="C0OPS")
    assert await lam.event(mention) == 200
    done = await sim.wait_for_call("chat.update", lambda c: "hello" in texts(c))
    assert "<!channel>" not in texts(done) and "&lt;!channel&gt;" in texts(done)
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert record.request.text == "echo <!channel> hello"
