"""The audit channel gets every audit event, in order, batched, through rate limits and outages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.engine import Engine
from bot.metrics import REGISTRY
from bot.models import Request
from bot.slack._lease import Lease
from bot.slack._state import SlackState
from bot.slack.audit_poster import AuditPoster
from bot.slack.options import SlackOptions
from bot.slack.service import web_client
from tests.conftest import EngineFactory
from tests.support.slack import TEAM_ID, SlackSimulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as shared:
        yield shared


class Recorder:
    """Stands in for ``asyncio.sleep``: records how long the poster asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Gate(Recorder):
    """Stands in for ``asyncio.sleep``: the poster waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        await super().__call__(seconds)
        await self.open.wait()


def poster_for(
    engine: Engine,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    sleep: Recorder,
    batch_size: int = 5,
) -> AuditPoster:
    """A poster of its own (its own lease holder) on the engine's store."""
    client = web_client(options, session, wait_out_rate_limits=False)
    return AuditPoster(
        engine.store,
        client,
        SlackState(engine.store, TEAM_ID),
        Lease(engine.store, ttl=5.0),
        "C0AUDIT",
        batch_size=batch_size,
        poll_interval=0.01,
        sleep=sleep,
    )


async def make_events(engine: Engine, requests: int) -> list[int]:
    for _ in range(requests):
        await engine.ask(
            Request(text="noop", requester="user:T0LAMTEST/U0ALICE", environment="dev")
        )
    return [event.seq async for event in engine.store.audit_events()]


def posted_seqs(sim: SlackSimulator) -> list[int]:
    text = "\n".join(str(c.args["text"]) for c in sim.calls_to("chat.postMessage") if c.ok)
    return [int(seq) for seq in re.findall(r"^`(\d+)`", text, re.MULTILINE)]


def lag() -> float | None:
    return REGISTRY.get_sample_value("lam_audit_post_lag_events")


async def test_batches_in_order(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
) -> None:
    """Events go out five to a message, in sequence order, each exactly once."""
    engine = make_engine()
    seqs = await make_events(engine, 3)
    poster = poster_for(engine, options, session, Recorder())
    await poster.drain()
    assert posted_seqs(sim) == seqs
    assert len(sim.calls_to("chat.postMessage")) == -(-len(seqs) // 5)
    assert await poster.position() == seqs[-1]


async def test_rate_limits_are_waited_out(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
) -> None:
    """A 429 makes the poster wait Slack's Retry-After and post the same batch again."""
    engine = make_engine()
    seqs = await make_events(engine, 1)
    sim.rate_limit("chat.postMessage", times=2, retry_after=7)
    sleep = Recorder()
    await poster_for(engine, options, session, sleep).drain()
    assert sleep.waits == [7.0, 7.0]
    assert [c.status for c in sim.calls_to("chat.postMessage")][:3] == [429, 429, 200]
    assert posted_seqs(sim) == seqs


async def test_an_outage_loses_nothing(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
) -> None:
    """While Slack fails the poster backs off and keeps its place; then every event is there."""
    engine = make_engine()
    seqs = await make_events(engine, 2)
    sim.fail("chat.postMessage", "fatal_error", times=4, status=500)
    sleep = Recorder()
    await poster_for(engine, options, session, sleep).drain()
    assert sleep.waits == [1.0, 2.0, 4.0, 8.0]
    assert posted_seqs(sim) == seqs


async def test_position_survives_a_restart(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
) -> None:
    """A new poster on the same store posts only what the old one had not."""
    engine = make_engine()
    first = await make_events(engine, 1)
    await poster_for(engine, options, session, Recorder()).drain()
    everything = await make_events(engine, 1)
    restarted = poster_for(engine, options, session, Recorder())
    assert await restarted.position() == first[-1]
    await restarted.drain()
    assert posted_seqs(sim) == everything


async def test_running_poster_follows_new_events_and_reports_its_lag(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
) -> None:
    """The running poster posts events as they are stored; the lag gauge counts what is left."""
    engine = make_engine()
    gate = Gate()
    poster = poster_for(engine, options, session, gate)
    sim.fail("chat.postMessage", "fatal_error", times=1, status=500)
    seqs = await make_events(engine, 1)
    assert await poster.lease.renew()
    stop = asyncio.Event()
    running = asyncio.create_task(poster.run(stop))
    # Slack refused the first attempt: until the retry, every event is lagging.
    await sim.wait_for_call("chat.postMessage", lambda c: c.status == 500)
    assert lag() == len(seqs)
    gate.open.set()
    await sim.wait_for_call("chat.postMessage", lambda c: f"`{seqs[-1]}`" in str(c.args["text"]))
    # Stopping lets the batch in flight finish: its position is stored, the gauge updated.
    stop.set()
    await running
    assert posted_seqs(sim) == seqs
    assert lag() == 0


class WronglySure(Lease):
    """A replica's view of the lease that is wrong: it always believes it holds it."""

    async def renew(self) -> bool:
        self.holding = True
        return True


async def test_two_posters_that_both_think_they_lead_post_each_event_once(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
) -> None:
    """A replica wrongly sure it holds the lease still cannot post a batch another claimed."""
    engine = make_engine()
    seqs = await make_events(engine, 4)
    leader = poster_for(engine, options, session, Recorder(), batch_size=2)
    stale = poster_for(engine, options, session, Recorder(), batch_size=2)
    stale.lease = WronglySure(engine.store, ttl=5.0)
    assert await leader.lease.renew() and await stale.lease.renew()
    stop = asyncio.Event()
    both = [asyncio.create_task(p.run(stop)) for p in (leader, stale)]
    await sim.wait_for(lambda: posted_seqs(sim)[-1:] == seqs[-1:] or None, what="every event")
    stop.set()
    await asyncio.gather(*both)
    assert posted_seqs(sim) == seqs
    assert leader.posted + stale.posted == len(seqs)
