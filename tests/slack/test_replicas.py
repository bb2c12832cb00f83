"""Several replicas on one Redis: one follows up at a time, and any of them knows LAM's threads."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from bot.audit import Redactor
from bot.engine import Engine
from bot.models import Request
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from bot.slack.options import SlackOptions
from bot.slack.server import running
from bot.slack.service import open_service
from bot.store.redis import RedisStore
from connectors import Catalog
from tests.slack.conftest import GatedConnector, Lam, texts
from tests.slack.test_dm_and_threads import channel_reply
from tests.support.slack import SIGNING_SECRET, ApiCall, SlackSimulator
from tests.support.slack_process import lam_serve
from tests.support.waiting import eventually


@pytest.fixture
def replica_options(options: SlackOptions) -> SlackOptions:
    """Replicas whose lease a dead holder keeps for one second."""
    return replace(options, lease_ttl=1.0)


@asynccontextmanager
async def replica(
    sim: SlackSimulator,
    options: SlackOptions,
    policy_dir: Path,
    connector: GatedConnector,
    redis_url: str,
    prefix: str,
) -> AsyncIterator[Lam]:
    """One ``lam serve`` replica in this process, over HTTP, on the shared Redis."""
    store = await RedisStore.open(redis_url, prefix=prefix)
    engine = Engine(
        store=store,
        policy=Policy.load(policy_dir),
        catalog=Catalog([connector]),
        planner=AliasPlanner(),
        redactor=Redactor(),
    )
    try:
        async with (
            aiohttp.ClientSession() as session,
            open_service(engine, options, session) as service,
            running(service, options, host="127.0.0.1", port=0, health_port=None) as url,
        ):
            yield Lam(sim, service, engine, "http", url)
    finally:
        await store.aclose()


def is_results(call: ApiCall) -> bool:
    return "Request `" in texts(call) and "finished successfully" in texts(call)


def posted_seqs(sim: SlackSimulator) -> list[int]:
    """The seq of every audit line the audit channel got, in the order it got them."""
    posts = [c for c in sim.calls_to("chat.postMessage") if c.ok and c.args["channel"] == "C0AUDIT"]
    text = "\n".join(str(c.args["text"]) for c in posts)
    return [int(seq) for seq in re.findall(r"^`(\d+)`", text, re.MULTILINE)]


async def all_posted(sim: SlackSimulator, store: RedisStore) -> list[int]:
    """Every stored event's seq, once the audit channel has got them all."""
    seqs = [event.seq async for event in store.audit_events()]
    await sim.wait_for(lambda: posted_seqs(sim)[-1:] == seqs[-1:] or None, what="every event")
    return seqs


async def position_stored(store: RedisStore, seq: int) -> None:
    """Return once the audit channel's position in the store is ``seq``.

    Storing the position sends Slack nothing to wait on, so the store itself is polled.
    """

    async def stored() -> bool:
        return await store.recall("slack:audit:C0AUDIT") == str(seq)

    await eventually(stored, f"the audit position {seq} in the store")


async def test_one_replica_follows_up_and_the_other_carries_on_when_it_stops(
    sim: SlackSimulator,
    replica_options: SlackOptions,
    policy_dir: Path,
    connector: GatedConnector,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """Two replicas: one renders and posts every audit event once, in order; then the other."""
    async with AsyncExitStack() as first_stack, AsyncExitStack() as second_stack:
        setup = (sim, replica_options, policy_dir, connector, redis_url, redis_prefix)
        first = await first_stack.enter_async_context(replica(*setup))
        second = await second_stack.enter_async_context(replica(*setup))
        assert first.service.lease.holding and not second.service.lease.holding

        mentions = [sim.app_mention(f"restart api{n}", channel="C0OPS") for n in range(4)]
        for n, mention in enumerate(mentions):
            assert await (first, second)[n % 2].event(mention) == 200
        for n in range(4):
            await sim.wait_for_call(
                "chat.update", lambda c, n=n: f"api{n}" in texts(c) and "finished" in texts(c)
            )
        store = first.engine.store
        assert isinstance(store, RedisStore)
        seqs = await all_posted(sim, store)
        assert posted_seqs(sim) == seqs
        assert second.service.poster is not None and second.service.poster.posted == 0
        results = await sim.wait_for_calls("chat.postMessage", 4, is_results)
        assert sorted(texts(c).split("`")[1] for c in results) == sorted(
            r.id for r in await store.history()
        )

        # The leader stops cleanly and lets go: at its next renewal (a third of the lease,
        # well before a dead leader's lease would run out) the other replica carries on.
        await first_stack.aclose()
        await second.event(sim.app_mention("restart api9", channel="C0OPS"))
        await sim.wait_for_call(
            "chat.update", lambda c: "api9" in texts(c) and "finished" in texts(c), timeout=0.9
        )
        everything = await all_posted(sim, store)
        assert posted_seqs(sim) == everything and len(everything) > len(seqs)
        await position_stored(store, everything[-1])
        # The poster counts a batch once its position is stored, which the store may show
        # a moment before the poster's own await returns.
        poster = second.service.poster
        assert poster is not None
        await eventually(lambda: poster.posted > 0, "the second replica's poster to count")
        assert second.service.lease.holding
        # Each request's results went out once, whichever replica rendered it.
        assert len([c for c in sim.calls_to("chat.postMessage") if is_results(c)]) == 5


async def test_a_reply_in_a_lam_thread_is_known_to_every_replica(
    sim: SlackSimulator,
    replica_options: SlackOptions,
    policy_dir: Path,
    connector: GatedConnector,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """A thread one replica started is recognised by another, which makes the reply a request."""
    setup = (sim, replica_options, policy_dir, connector, redis_url, redis_prefix)
    async with replica(*setup) as first, replica(*setup) as second:
        mention = sim.app_mention("restart api", channel="C0OPS")
        assert await first.event(mention) == 200
        await sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
        assert await second.event(channel_reply("restart web", "2.000001", mention["ts"])) == 200
        await sim.wait_for_call(
            "chat.update", lambda c: "restart web" in texts(c) and "finished" in texts(c)
        )
        await second.idle()
        asked = await second.engine.store.history()
        assert sorted(r.request.text for r in asked) == ["restart api", "restart web"]
        assert {r.request.thread for r in asked} == {mention["ts"]}


async def test_a_killed_leader_is_replaced_and_no_event_is_lost(
    sim: SlackSimulator,
    replica_options: SlackOptions,
    policy_dir: Path,
    connector: GatedConnector,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    """kill -9 the replica posting the audit trail: another takes over, and no event is lost."""
    env = {
        "LAM_HOME": str(tmp_path / "killed"),
        "LAM_POLICY_DIR": str(policy_dir),
        "REDIS_URL": redis_url,
        "LAM_REDIS_PREFIX": redis_prefix,
        "LAM_SERVE_WORKERS": "0",
        "SLACK_BOT_TOKEN": sim.bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": sim.api_url,
        "LAM_AUDIT_CHANNEL": "C0AUDIT",
        "LAM_SLACK_POLL_SECONDS": "0.02",
        "LAM_SLACK_LEASE_SECONDS": "1",
    }
    setup = (sim, replica_options, policy_dir, connector, redis_url, redis_prefix)
    async with lam_serve(env) as leader, replica(*setup) as survivor:
        assert not survivor.service.lease.holding
        store = survivor.engine.store
        assert isinstance(store, RedisStore)
        alice = "user:T0LAMTEST/U0ALICE"
        await survivor.engine.ask(Request(text="restart api", requester=alice, environment="dev"))
        before = await all_posted(sim, store)
        # Once the leader has stored how far it got, it dies without letting go.
        await position_stored(store, before[-1])
        leader.process.send_signal(signal.SIGKILL)
        await leader.process.wait()

        await survivor.engine.ask(Request(text="restart web", requester=alice, environment="dev"))
        everything = await all_posted(sim, store)
        await position_stored(store, everything[-1])
        assert survivor.service.lease.holding
        assert survivor.service.poster is not None
        assert survivor.service.poster.posted == len(everything) - len(before)
        assert posted_seqs(sim) == everything
