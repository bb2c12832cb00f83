"""Policy subjects come from the payload's user ids, never names; user groups are cached."""

from __future__ import annotations

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.identity import Directory, Identity, identify, slack_user
from tests.slack.conftest import Lam, subject, texts
from tests.support.slack import SlackSimulator


def test_identify_reads_user_ids_only() -> None:
    """Events, commands and interactions each give ``user:TEAM/USER``; names are ignored."""
    event = {"team_id": "T0A", "event": {"type": "app_mention", "user": "U0X", "team": "T0A"}}
    command = {"team_id": "T0A", "user_id": "U0X", "user_name": "admin"}
    click = {"user": {"id": "U0X", "team_id": "T0A", "name": "admin"}, "team": {"id": "T0B"}}
    connect = {"team_id": "T0A", "event": {"type": "message", "user": "U0X", "user_team": "T0C"}}
    assert [identify(b) for b in (event, command, click)] == [Identity("T0A", "U0X")] * 3
    assert identify(connect) == Identity("T0C", "U0X")
    for nobody in (
        {},
        {"user": {"name": "admin"}},
        {"user_id": "admin", "team_id": "T0A"},
        {"user_id": "U0X", "team_id": "t0a/../x"},
    ):
        assert identify(nobody) is None
    assert slack_user("user:T0A/U0X") == "U0X"
    assert slack_user("role:lead") is None and slack_user("user:alice") is None


async def test_names_in_the_payload_do_not_authorise(lam: Lam) -> None:
    """A click whose user is carol but named 'bob' is carol's, and she may not approve."""
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart api", channel="C0PROD")) == 200
    plan = await sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    await lam.idle()
    [record] = await lam.engine.store.history()
    click = sim.block_actions_payload(
        "lam.approve", record.id, user="U0CAROL", channel="C0PROD", message_ts=plan.args["ts"]
    )
    click["user"] |= {"username": "bob", "name": "bob"}
    assert (await lam.interaction(click))[0] == 200
    await lam.idle()
    assert "user:T0LAMTEST/U0CAROL may not approve" in sim.response_posts[-1].body["text"]
    assert (await lam.engine.store.get(record.id)).approvals == ()


async def test_same_user_id_in_another_team_is_someone_else(lam: Lam) -> None:
    """U0BOB of another workspace is not the lead U0BOB of this one."""
    sim = lam.sim
    assert await lam.event(sim.app_mention("restart api", channel="C0PROD")) == 200
    plan = await sim.wait_for_call("chat.update", lambda c: "awaiting approval" in texts(c))
    await lam.idle()
    [record] = await lam.engine.store.history()
    click = sim.block_actions_payload(
        "lam.approve", record.id, user="U0BOB", channel="C0PROD", message_ts=plan.args["ts"]
    )
    click["user"]["team_id"] = "T0OTHER"
    assert (await lam.interaction(click))[0] == 200
    await lam.idle()
    assert "user:T0OTHER/U0BOB may not approve" in sim.response_posts[-1].body["text"]
    assert (await lam.engine.store.get(record.id)).state == "awaiting_approval"
    assert subject("U0BOB") not in str(await lam.engine.store.get(record.id))


async def test_directory_caches_and_refreshes(sim: SlackSimulator) -> None:
    """Groups are fetched once per refresh period, again when invalidated, and kept in an outage."""
    now = [0.0]
    async with aiohttp.ClientSession() as session:
        client = AsyncWebClient(token=sim.bot_token, base_url=sim.api_url, session=session)
        directory = Directory(client, refresh=60.0, clock=lambda: now[0])
        assert await directory.groups_of("U0BOB") == ("group:leads",)
        assert await directory.groups_of("U0ALICE") == ("group:developers",)
        assert len(sim.calls_to("usergroups.list")) == 1
        now[0] = 61.0
        sim.fail("usergroups.list", "fatal_error", status=500)
        assert await directory.groups_of("U0BOB") == ("group:leads",)
        directory.invalidate()
        assert await directory.groups_of("U0CAROL") == ()
        assert len(sim.calls_to("usergroups.list")) == 3
        group = await directory.group("leads")
        assert group is not None and group.members == {"U0BOB", "U0ERIN"}
