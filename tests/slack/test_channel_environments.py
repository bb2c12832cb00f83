"""A channel bound to an environment acts only there (``LAM_CHANNEL_ENVIRONMENTS``)."""

from __future__ import annotations

from tests.slack.conftest import GatedConnector, Lam, texts


async def test_staging_channel_cannot_act_on_prod(lam: Lam, connector: GatedConnector) -> None:
    """Naming prod in the staging-bound channel is refused; the same words run in staging."""
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart api in prod", channel="C0OPS")) == 200
    refused = await sim.wait_for_call("chat.update", lambda c: "could not be planned" in texts(c))
    assert "made for 'staging'" in texts(refused)
    assert await lam.event(sim.app_mention("restart api", channel="C0OPS")) == 200
    ran = await sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
    assert "in *staging*" in texts(ran)
    await lam.idle()
    records = await lam.engine.store.history()
    assert {r.request.environment for r in records} == {"staging"}
    assert connector.calls["test.restart"] == 1


async def test_prod_channel_plans_in_prod(lam: Lam) -> None:
    """A request in the prod-bound channel is planned for prod even when the text names none."""
    assert await lam.event(lam.sim.app_mention("restart api", channel="C0PROD")) == 200
    await lam.sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert record.intent is not None and record.intent.environment == "prod"
    assert record.intent.environment_source == "front"


async def test_unbound_dm_uses_the_text_or_default(lam: Lam) -> None:
    """A DM is bound to nothing: the environment comes from the text, else the default."""
    assert await lam.event(lam.sim.direct_message("restart api in staging")) == 200
    await lam.sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert record.request.environment is None
    assert record.intent is not None and record.intent.environment == "staging"
