"""How fast LAM acknowledges Slack, next to a bare bolt app that only acknowledges.

Both apps receive ``/lam help`` from the local Slack simulator, over HTTP (signed
deliveries to ``/slack/events``) and over Socket Mode (envelopes on a WebSocket), from 1
and from 50 concurrent senders. The time measured is the simulator's: from sending the
delivery to reading the HTTP response or receiving the Socket Mode ack.

LAM runs its whole front: its own signature and replay guard, the payload shape check,
bolt with LAM's middleware, and a listener that acks and hands the answer (an ephemeral
reply through the response_url) to the background. The baseline, measured in the same
run on the same loop, is a bolt ``AsyncApp`` whose ``/lam`` listener only calls
``ack()``; bolt's runner polls for that ack every 10 ms, which LAM avoids. A second
baseline, "bolt+reply", also posts the same ephemeral reply after its ack, so that under
load (when the answers share the loop with the acks) LAM is compared with bolt doing the
same work.

    python bench/slack_ingress.py [--requests 300] [--rounds 3]

Reports medians over the rounds of p50 and p99, and LAM's ratios to the baselines;
never run as a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import aiohttp
from pydantic import BaseModel
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.audit import Redactor
from bot.engine import Engine
from bot.logs import configure_logging
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from bot.slack.options import SlackOptions
from bot.slack.server import EVENTS_PATH, running
from bot.slack.service import SlackService, open_service
from bot.store.sqlite import SqliteStore
from connectors import Action, ActionContext, ActionResult, Catalog, Params
from tests.support.slack import SIGNING_SECRET, SlackSimulator, serve

REPO = Path(__file__).resolve().parent.parent
POLICY = "g, user:T0LAMTEST/U0ALICE, role:bench, *\np, role:bench, *, bench.noop, *, run, allow\n"
WARM_UP = 20

Transport = Literal["http", "socket"]
Send = Callable[[], Awaitable[float]]


class NoParams(Params):
    pass


async def noop(params: BaseModel, ctx: ActionContext) -> ActionResult:
    return ActionResult(output="ok")


def sender(sim: SlackSimulator, transport: Transport, url: str) -> Send:
    async def send() -> float:
        if transport == "http":
            delivery = await sim.send_command(url, "/lam", "help")
            assert delivery.status == 200, delivery.body
            return delivery.elapsed
        started = time.perf_counter()
        await sim.socket_send("slash_commands", sim.command_payload("/lam", "help"))
        return time.perf_counter() - started

    return send


async def _connected(sim: SlackSimulator, before: int) -> None:
    await sim.wait_for_socket(before + 1)


@asynccontextmanager
async def lam_front(
    sim: SlackSimulator, transport: Transport, directory: Path
) -> AsyncIterator[tuple[Send, SlackService]]:
    policy_dir = directory / "policies"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / "model.conf").write_text((REPO / "policies" / "model.conf").read_text())
    (policy_dir / "policy.csv").write_text(POLICY)
    store = await SqliteStore.open(directory / f"lam-{transport}.db")
    engine = Engine(
        store=store,
        policy=Policy.load(policy_dir),
        catalog=Catalog.of([Action("bench.noop", "No-op.", NoParams, noop, examples=("noop",))]),
        planner=AliasPlanner(),
        redactor=Redactor(),
    )
    options = SlackOptions(
        bot_token=sim.bot_token,
        signing_secret=SIGNING_SECRET,
        app_token=sim.app_token if transport == "socket" else None,
        api_url=sim.api_url,
    )
    before = len(sim.socket_connections)
    try:
        async with (
            aiohttp.ClientSession() as session,
            open_service(engine, options, session) as service,
            running(service, options, host="127.0.0.1", port=0, health_port=None) as url,
        ):
            if transport == "socket":
                await _connected(sim, before)
            yield sender(sim, transport, url + EVENTS_PATH), service
    finally:
        await store.aclose()


@asynccontextmanager
async def bare_bolt(
    sim: SlackSimulator, transport: Transport, *, reply: bool
) -> AsyncIterator[Send]:
    async with aiohttp.ClientSession() as session:
        client = AsyncWebClient(token=sim.bot_token, base_url=sim.api_url, session=session)
        app = AsyncApp(client=client, signing_secret=SIGNING_SECRET)

        @app.command("/lam")
        async def ack_only(ack: AsyncAck, command: dict[str, str]) -> None:
            await ack()
            if reply:
                webhook = AsyncWebhookClient(command["response_url"], session=session)
                await webhook.send(text="help", response_type="ephemeral")

        if transport == "http":
            async with serve(app.web_app(path=EVENTS_PATH)) as base_url:
                yield sender(sim, transport, base_url + EVENTS_PATH)
            return
        before = len(sim.socket_connections)
        handler = AsyncSocketModeHandler(app, sim.app_token)
        await handler.connect_async()  # type: ignore[no-untyped-call]  # bolt leaves it unannotated
        try:
            await _connected(sim, before)
            yield sender(sim, transport, "")
        finally:
            await handler.close_async()  # type: ignore[no-untyped-call]  # likewise


async def measure(send: Send, requests: int, concurrency: int) -> list[float]:
    """Latencies of ``requests`` deliveries from ``concurrency`` senders, each in turn."""
    for _ in range(WARM_UP):
        await send()
    latencies: list[float] = []
    share = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]

    async def one_sender(count: int) -> None:
        for _ in range(count):
            latencies.append(await send())

    await asyncio.gather(*(one_sender(count) for count in share))
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def one_round(
    transport: Transport, concurrency: int, requests: int, directory: Path
) -> dict[str, tuple[float, float]]:
    """p50 and p99 (seconds) of each app, on one fresh simulator."""
    found: dict[str, tuple[float, float]] = {}
    async with SlackSimulator() as sim:
        for name, reply in (("bolt", False), ("bolt+reply", True)):
            async with bare_bolt(sim, transport, reply=reply) as send:
                latencies = await measure(send, requests, concurrency)
            found[name] = (percentile(latencies, 0.5), percentile(latencies, 0.99))
        async with lam_front(sim, transport, directory) as (send, service):
            latencies = await measure(send, requests, concurrency)
            await service.idle()
        found["LAM"] = (percentile(latencies, 0.5), percentile(latencies, 0.99))
    return found


async def main(requests: int, rounds: int) -> None:
    configure_logging(log_format="console", level="error", redactor=Redactor())
    print(f"/lam help acknowledged, {requests} per round, median of {rounds} rounds (ms)")
    print(
        f"{'transport':<9} {'senders':>7} {'pct':>4} {'bolt':>7} {'bolt+reply':>10}"
        f" {'LAM':>7} {'LAM/bolt':>8} {'LAM/(bolt+reply)':>16}"
    )
    with tempfile.TemporaryDirectory() as temporary:
        for transport in ("http", "socket"):
            for concurrency in (1, 50):
                runs = [
                    await one_round(transport, concurrency, requests, Path(temporary))
                    for _ in range(rounds)
                ]
                for index, label in ((0, "p50"), (1, "p99")):
                    ms = {
                        name: statistics.median(run[name][index] for run in runs) * 1000
                        for name in ("bolt", "bolt+reply", "LAM")
                    }
                    print(
                        f"{transport:<9} {concurrency:>7} {label:>4} {ms['bolt']:>7.2f}"
                        f" {ms['bolt+reply']:>10.2f} {ms['LAM']:>7.2f}"
                        f" {ms['LAM'] / ms['bolt']:>8.2f}"
                        f" {ms['LAM'] / ms['bolt+reply']:>16.2f}"
                    )
    sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, arguments.rounds))
