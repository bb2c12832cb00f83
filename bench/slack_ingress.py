"""How fast LAM acknowledges Slack, next to a bare bolt app that only acknowledges.

Slack (the local simulator and its senders) runs in this process; each app under test runs
in a child process of its own, as it would in production, so that the simulator's work is
not charged to the app. With two CPUs or more, each app runs on one CPU of its own
(``APP_CPU``) and Slack on the others: every app gets the same CPU, and Slack's load does
not compete with it. Three kinds of delivery, over HTTP (signed, to ``/slack/events``)
and over Socket Mode (envelopes on a WebSocket), from 1 and from 50 concurrent senders:

- ``command``: ``/lam help``; LAM answers through the ``response_url``;
- ``mention``: an ``app_mention`` asking "noop"; LAM claims it, posts a plan message,
  plans, runs ``bench.noop`` and posts the results in the thread;
- ``click``: a "Next page" button (``block_actions``) of ``/lam history``; LAM reads the
  store and replaces the listing through the ``response_url``.

The time measured is Slack's: from sending the delivery to reading the HTTP response or
receiving the Socket Mode ack. The baseline, measured in the same run, is a bolt
``AsyncApp`` with a listener per kind that only calls ``ack()`` (bolt acks events itself,
at once; for commands and actions its runner polls for the ack every 10 ms, which LAM
avoids). ``LAM`` is the whole front as ``lam serve`` runs it: deliveries acknowledged by
its ingress process, their work done by the main one (``bot.slack.ingress``);
``LAM-inline`` is the same front in one process (``LAM_SLACK_INGRESS=inline``), where
acks share the event loop with the work. LAM's work runs ``LAM_SLACK_WORK_NICE`` below
its ingress, as ``lam serve`` runs it, on the same CPU.

A second table shows when LAM's answer reached Slack ("answered": the response_url
post, or the plan message in the thread) and each app's CPU time per delivery (all its
processes). With no pause between a sender's deliveries the app never waits for work,
so at 50 senders (and for mentions even at one) its work is saturated: inline, each ack
then waits behind the CPU the other deliveries' work takes.

    python -m bench.slack_ingress [--requests 300] [--rounds 3] [--concurrency N]

``--concurrency`` is LAM's ``LAM_SLACK_CONCURRENCY`` (its default unless given).

Reports medians over the rounds; never run as a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
from pydantic import BaseModel
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.web.async_client import AsyncWebClient

from bot.audit import Redactor
from bot.engine import Engine
from bot.logs import configure_logging
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from bot.slack.blocks import PAGE
from bot.slack.commands import page_value
from bot.slack.options import SlackOptions, SlackSettings
from bot.slack.server import running
from bot.slack.service import open_service
from bot.slack.transport import EVENTS_PATH
from bot.store.sqlite import SqliteStore
from connectors import Action, ActionContext, ActionResult, Catalog, Params
from tests.support.slack import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, SlackSimulator, serve

REPO = Path(__file__).resolve().parent.parent
POLICY = "g, user:T0LAMTEST/U0ALICE, role:bench, *\np, role:bench, *, bench.noop, *, run, allow\n"
WARM_UP = 20
WORK_NICE = SlackSettings.model_fields["lam_slack_work_nice"].default
"""``lam serve``'s default: LAM's work runs below its ingress's CPU priority."""
CPUS = sorted(os.sched_getaffinity(0))
APP_CPU = CPUS[-1] if len(CPUS) > 1 else None
"""The CPU each app under test (all its processes) runs on; Slack (the simulator and its
senders) runs on the others. Each app gets the same one CPU, and Slack's work is not
charged to it, as in production, where Slack is elsewhere."""
ANSWER_TIMEOUT = 120.0
"""Seconds LAM has to answer every delivery of one measurement."""

App = Literal["bolt", "LAM", "LAM-inline"]
Kind = Literal["command", "mention", "click"]
Transport = Literal["http", "socket"]
APPS: tuple[App, ...] = ("bolt", "LAM", "LAM-inline")
KINDS: tuple[Kind, ...] = ("command", "mention", "click")
TRANSPORTS: tuple[Transport, ...] = ("http", "socket")
SENDERS = (1, 50)
CLICK = f"{PAGE}.1"


# -- the apps under test, each run as ``--serve APP`` in a child process -------------------


class NoParams(Params):
    pass


async def noop(params: BaseModel, ctx: ActionContext) -> ActionResult:
    return ActionResult(output="ok")


@asynccontextmanager
async def lam_app(
    transport: Transport, api_url: str, home: Path, *, ingress: bool, concurrency: int | None
) -> AsyncIterator[str]:
    """LAM's whole front on a SQLite store in ``home``, taking deliveries in its ingress
    process or in its own; yields its base URL."""
    policy_dir = home / "policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    (policy_dir / "model.conf").write_text((REPO / "policies" / "model.conf").read_text())
    (policy_dir / "policy.csv").write_text(POLICY)
    store = await SqliteStore.open(home / "lam.db")
    engine = Engine(
        store=store,
        policy=Policy.load(policy_dir),
        catalog=Catalog.of([Action("bench.noop", "No-op.", NoParams, noop, examples=("noop",))]),
        planner=AliasPlanner(),
        redactor=Redactor(),
    )
    options = SlackOptions(
        bot_token=BOT_TOKEN,
        signing_secret=SIGNING_SECRET,
        app_token=APP_TOKEN if transport == "socket" else None,
        api_url=api_url,
        freeze_startup_objects=True,
        ingress_process=ingress,
        work_nice=WORK_NICE if ingress else 0,
        log_level="error",
    )
    if concurrency is not None:
        options = replace(options, concurrency=concurrency)
    try:
        async with (
            aiohttp.ClientSession() as session,
            open_service(engine, options, session) as service,
            running(service, options, host="127.0.0.1", port=0, health_port=None) as url,
        ):
            yield url
    finally:
        await store.aclose()


@asynccontextmanager
async def bolt_app(transport: Transport, api_url: str, home: Path) -> AsyncIterator[str]:
    """A bolt app whose listeners only acknowledge; yields its base URL (HTTP) or ``""``."""
    del home
    async with aiohttp.ClientSession() as session:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=api_url, session=session)
        app = AsyncApp(client=client, signing_secret=SIGNING_SECRET)

        async def ack_only(ack: AsyncAck) -> None:
            await ack()

        async def ignore() -> None:
            pass

        app.command("/lam")(ack_only)
        app.action(CLICK)(ack_only)
        app.event("app_mention")(ignore)
        if transport == "http":
            async with serve(app.web_app(path=EVENTS_PATH)) as base_url:
                yield base_url
            return
        handler = AsyncSocketModeHandler(app, APP_TOKEN)
        await handler.connect_async()  # type: ignore[no-untyped-call]  # bolt leaves it unannotated
        try:
            yield ""
        finally:
            await handler.close_async()  # type: ignore[no-untyped-call]  # likewise


async def serve_app(
    app: App, transport: Transport, api_url: str, home: Path, concurrency: int | None
) -> None:
    """The child: serve until SIGTERM, after printing ``ready URL`` on stdout."""
    if APP_CPU is not None:
        os.sched_setaffinity(0, {APP_CPU})
    configure_logging(log_format="console", level="error", redactor=Redactor())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if app == "bolt":
        serving = bolt_app(transport, api_url, home)
    else:
        serving = lam_app(transport, api_url, home, ingress=app == "LAM", concurrency=concurrency)
    async with serving as url:
        print(f"ready {url or '-'}", flush=True)
        await stop.wait()


# -- Slack's side ---------------------------------------------------------------------------


@dataclass
class Child:
    """An app under test in its own process."""

    process: asyncio.subprocess.Process
    url: str

    def cpu_seconds(self) -> float:
        """User and system CPU time the app's processes (its ingress included) have used so
        far (Linux ``/proc``)."""
        return sum(_cpu_seconds(pid) for pid in _tree(self.process.pid))


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child_pid in children:
            found += _tree(int(child_pid))
    return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def child(
    sim: SlackSimulator, app: App, transport: Transport, home: Path, concurrency: int | None
) -> AsyncIterator[Child]:
    before = len(sim.socket_connections)
    options = [] if concurrency is None else ["--concurrency", str(concurrency)]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.slack_ingress",
        "--serve",
        app,
        "--transport",
        transport,
        "--api-url",
        sim.api_url,
        "--home",
        str(home),
        *options,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().split()
        if line[:1] != ["ready"]:
            raise RuntimeError(f"{app} did not start ({line!r})")
        if transport == "socket":
            await sim.wait_for_socket(before + 1, timeout=30)
        yield Child(process, line[1])
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()


Send = Callable[[], Awaitable[tuple[float, str]]]


def sender(sim: SlackSimulator, kind: Kind, transport: Transport, url: str) -> Send:
    """Sends one delivery of ``kind``; returns the seconds to its ack and its answer's key."""
    events_url = url + EVENTS_PATH

    async def send() -> tuple[float, str]:
        payload: dict[str, Any]
        if kind == "mention":
            event = sim.app_mention("noop")
            key, payload, socket_type = str(event["ts"]), sim.event_callback(event), "events_api"
        elif kind == "command":
            payload, socket_type = dict(sim.command_payload("/lam", "help")), "slash_commands"
        else:
            payload = sim.block_actions_payload(CLICK, page_value("history", 1))
            socket_type = "interactive"
        if kind != "mention":
            key = str(payload["response_url"]).rpartition("/")[2]
        if transport == "socket":
            started = time.perf_counter()
            await sim.socket_send(socket_type, payload)  # type: ignore[arg-type]
            return time.perf_counter() - started, key
        if kind == "mention":
            delivery = await sim.send_event(events_url, payload)
        elif kind == "command":
            delivery = await sim.send_raw(events_url, urlencode(payload), payload=payload)
        else:
            delivery = await sim.send_interaction(events_url, payload)
        assert delivery.status == 200, delivery.body
        return delivery.elapsed, key

    return send


def answered_at(sim: SlackSimulator, kind: Kind, keys: set[str]) -> dict[str, float] | None:
    """When Slack got LAM's answer to each delivery, once every one has been answered.

    A mention counts once its results are in the thread, so that its work is over before
    the next measurement; its answer is the first message there (the plan).
    """
    found: dict[str, float] = {}
    if kind == "mention":
        replies: dict[str, list[float]] = {}
        for call in sim.calls_to("chat.postMessage"):
            thread = str(call.args.get("thread_ts"))
            if thread in keys:
                replies.setdefault(thread, []).append(call.at)
        found = {key: min(times) for key, times in replies.items() if len(times) >= 2}
    else:
        found = {p.response_id: p.at for p in sim.response_posts if p.response_id in keys}
    return found if len(found) == len(keys) else None


@dataclass
class Measured:
    acks: list[float]
    answers: list[float]
    cpu_per_delivery: float


async def measure(
    sim: SlackSimulator,
    app: Child,
    name: App,
    kind: Kind,
    transport: Transport,
    senders: int,
    requests: int,
) -> Measured:
    """``requests`` deliveries from ``senders`` concurrent senders, each sending in turn."""
    send = sender(sim, kind, transport, app.url)
    for _ in range(WARM_UP):
        await send()
    cpu = app.cpu_seconds()
    acks: list[float] = []
    sent: dict[str, float] = {}
    share = [requests // senders + (i < requests % senders) for i in range(senders)]

    async def one_sender(count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            elapsed, key = await send()
            acks.append(elapsed)
            sent[key] = started

    await asyncio.gather(*(one_sender(count) for count in share))
    answers: list[float] = []
    if name != "bolt":
        at = await sim.wait_for(
            lambda: answered_at(sim, kind, set(sent)),
            what="LAM's answers",
            timeout=ANSWER_TIMEOUT,
        )
        answers = [at[key] - started for key, started in sent.items()]
    return Measured(acks, answers, (app.cpu_seconds() - cpu) / requests)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


Results = dict[tuple[Kind, Transport, int, App], list[Measured]]


async def one_round(
    sim: SlackSimulator, requests: int, directory: Path, found: Results, concurrency: int | None
) -> None:
    for transport in TRANSPORTS:
        for app_name in APPS:
            home = Path(tempfile.mkdtemp(dir=directory))
            async with child(sim, app_name, transport, home, concurrency) as app:
                for kind in KINDS:
                    for senders in SENDERS:
                        measured = await measure(
                            sim, app, app_name, kind, transport, senders, requests
                        )
                        found.setdefault((kind, transport, senders, app_name), []).append(measured)


def report(found: Results, requests: int, rounds: int, concurrency: int) -> None:
    def median(runs: list[Measured], pick: Callable[[Measured], float]) -> float:
        return statistics.median(pick(m) for m in runs)

    def p(runs: list[Measured], q: float, answers: bool = False) -> float:
        return median(runs, lambda m: percentile(m.answers if answers else m.acks, q)) * 1000

    print(
        f"Acks (ms), {requests} deliveries per measurement, median of {rounds} rounds,"
        f" LAM_SLACK_CONCURRENCY={concurrency}"
    )
    print(
        f"{'kind':<8}{'transport':<10}{'senders':>7}{'bolt p50':>10}{'p99':>7}"
        f"{'LAM p50':>9}{'p99':>7}{'ratios':>12}{'inline p50':>12}{'p99':>7}{'ratios':>12}"
    )
    rows = [(k, t, n) for k in KINDS for t in TRANSPORTS for n in SENDERS]
    for kind, transport, senders in rows:
        runs = {app: found[kind, transport, senders, app] for app in APPS}
        bolt = (p(runs["bolt"], 0.5), p(runs["bolt"], 0.99))
        line = f"{kind:<8}{transport:<10}{senders:>7}{bolt[0]:>10.2f}{bolt[1]:>7.2f}"
        columns: tuple[tuple[App, int], ...] = (("LAM", 9), ("LAM-inline", 12))
        for app, width in columns:
            mine = (p(runs[app], 0.5), p(runs[app], 0.99))
            ratios = f"{mine[0] / bolt[0]:.2f}/{mine[1] / bolt[1]:.2f}"
            line += f"{mine[0]:>{width}.2f}{mine[1]:>7.2f}{ratios:>12}"
        print(line)
    print()
    print("LAM's work: answer reaching Slack (ms) and app CPU per delivery (µs), ack and work")
    print(
        f"{'kind':<8}{'transport':<10}{'senders':>7}{'answered p50':>14}{'p99':>8}"
        f"{'inline p50':>12}{'p99':>8}{'CPU bolt':>10}{'LAM':>7}{'inline':>8}"
    )
    for kind, transport, senders in rows:
        runs = {app: found[kind, transport, senders, app] for app in APPS}
        cpu = {app: median(runs[app], lambda m: m.cpu_per_delivery) * 1e6 for app in APPS}
        print(
            f"{kind:<8}{transport:<10}{senders:>7}"
            f"{p(runs['LAM'], 0.5, True):>14.2f}{p(runs['LAM'], 0.99, True):>8.2f}"
            f"{p(runs['LAM-inline'], 0.5, True):>12.2f}{p(runs['LAM-inline'], 0.99, True):>8.2f}"
            f"{cpu['bolt']:>10.0f}{cpu['LAM']:>7.0f}{cpu['LAM-inline']:>8.0f}"
        )


async def main(requests: int, rounds: int, concurrency: int | None) -> None:
    if APP_CPU is not None:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {APP_CPU})
    configure_logging(log_format="console", level="error", redactor=Redactor())
    found: Results = {}
    with tempfile.TemporaryDirectory() as temporary:
        async with SlackSimulator() as sim:
            for _ in range(rounds):
                await one_round(sim, requests, Path(temporary), found, concurrency)
    report(
        found,
        requests,
        rounds,
        SlackOptions(BOT_TOKEN).concurrency if concurrency is None else concurrency,
    )
    sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", choices=APPS, help=argparse.SUPPRESS)
    parser.add_argument("--transport", choices=TRANSPORTS, help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help="LAM_SLACK_CONCURRENCY for LAM")
    arguments = parser.parse_args()
    if arguments.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                serve_app(
                    arguments.serve,
                    arguments.transport,
                    arguments.api_url,
                    arguments.home,
                    arguments.concurrency,
                )
            )
    else:
        asyncio.run(main(arguments.requests, arguments.rounds, arguments.concurrency))
