"""The audit channel gets every audit event, in order, batched, through rate limits and outages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.engine import Engine
from bot.models import Request
from bot.slack._state import SlackState
from bot.slack.audit_poster import AuditPoster
from bot.slack.options import SlackOptions
from bot.slack.service import web_client
from tests.conftest import EngineFactory
from tests.support.slack import SlackSimulator


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


def poster_for(
    engine: Engine,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    state: SlackState,
    sleep: Recorder,
    batch_size: int = 5,
) -> AuditPoster:
    client = web_client(options, session, wait_out_rate_limits=False)
    return AuditPoster(
        engine.store,
        client,
        state,
        "C0AUDIT",
        batch_size=batch_size,
        poll_interval=0.01,
        sleep=sleep,
    )


async def make_events(engine: Engine, requests: int) -> list[int]:
    for n in range(requests):
        await engine.ask(
            Request(text="noop", requester="user:T0LAMTEST/U0ALICE", environment="dev")
        )
        del n
    return [event.seq async for event in engine.store.audit_events()]


def posted_seqs(sim: SlackSimulator) -> list[int]:
    text = "\n".join(str(c.args["text"]) for c in sim.calls_to("chat.postMessage") if c.ok)
    return [int(seq) for seq in re.findall(r"^`(\d+)`", text, re.MULTILINE)]


async def test_batches_in_order(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
    tmp_path: Path,
) -> None:
    """Events go out five to a message, in sequence order, each exactly once."""
    engine = make_engine()
    seqs = await make_events(engine, 3)
    poster = poster_for(engine, options, session, SlackState(tmp_path / "s.json"), Recorder())
    await poster.drain()
    assert posted_seqs(sim) == seqs
    assert len(sim.calls_to("chat.postMessage")) == -(-len(seqs) // 5)
    assert poster.position == seqs[-1]


async def test_rate_limits_are_waited_out(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
    tmp_path: Path,
) -> None:
    """A 429 makes the poster wait Slack's Retry-After and post the same batch again."""
    engine = make_engine()
    seqs = await make_events(engine, 1)
    sim.rate_limit("chat.postMessage", times=2, retry_after=7)
    sleep = Recorder()
    await poster_for(engine, options, session, SlackState(tmp_path / "s.json"), sleep).drain()
    assert sleep.waits == [7.0, 7.0]
    assert [c.status for c in sim.calls_to("chat.postMessage")][:3] == [429, 429, 200]
    assert posted_seqs(sim) == seqs


async def test_an_outage_loses_nothing(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
    tmp_path: Path,
) -> None:
    """While Slack fails the poster backs off and keeps its place; then every event is there."""
    engine = make_engine()
    seqs = await make_events(engine, 2)
    sim.fail("chat.postMessage", "fatal_error", times=4, status=500)
    sleep = Recorder()
    await poster_for(engine, options, session, SlackState(tmp_path / "s.json"), sleep).drain()
    assert sleep.waits == [1.0, 2.0, 4.0, 8.0]
    assert posted_seqs(sim) == seqs


async def test_position_survives_a_restart(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
    tmp_path: Path,
) -> None:
    """A new poster on the same state file posts only what the old one had not."""
    engine = make_engine()
    first = await make_events(engine, 1)
    path = tmp_path / "slack-state.json"
    await poster_for(engine, options, session, SlackState(path), Recorder()).drain()
    everything = await make_events(engine, 1)
    restarted = poster_for(engine, options, session, SlackState(path), Recorder())
    assert restarted.position == first[-1]
    await restarted.drain()
    assert posted_seqs(sim) == everything


async def test_running_poster_follows_new_events(
    sim: SlackSimulator,
    options: SlackOptions,
    session: aiohttp.ClientSession,
    make_engine: EngineFactory,
    tmp_path: Path,
) -> None:
    """The running poster posts events as they are stored, until stopped."""
    engine = make_engine()
    poster = poster_for(engine, options, session, SlackState(None), Recorder())
    stop = asyncio.Event()
    running = asyncio.create_task(poster.run(stop))
    seqs = await make_events(engine, 1)
    poster.wake()
    await sim.wait_for_call("chat.postMessage", lambda c: f"`{seqs[-1]}`" in str(c.args["text"]))
    stop.set()
    await running
    assert posted_seqs(sim) == seqs
