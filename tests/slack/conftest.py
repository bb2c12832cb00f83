"""The Slack front under test: the real bolt app over HTTP or Socket Mode, against the simulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from pydantic import BaseModel

from bot.engine import Engine
from bot.slack.options import SlackOptions
from bot.slack.server import running
from bot.slack.service import SlackService, open_service
from bot.slack.transport import EVENTS_PATH
from connectors import Action, ActionContext, ActionResult
from tests.conftest import EngineFactory, write_policy
from tests.support.actions import ScriptedConnector, ServiceParams
from tests.support.slack import SIGNING_SECRET, TEAM_ID, ApiCall, SlackSimulator

Transport = Literal["http", "socket"]


def subject(user: str) -> str:
    return f"user:{TEAM_ID}/{user}"


SLACK_POLICY = f"""\
# alice and dave develop: they run test actions outside prod, and ask for them in prod.
g, {subject("U0ALICE")}, role:developer, *
g, {subject("U0DAVE")}, role:developer, *
p, role:developer, staging, test.*, *, run, allow
p, role:developer, dev, test.*, *, run, allow
p, role:developer, prod, test.noop, *, run, allow
p, role:developer, prod, test.*, *, request, allow
p, role:developer, prod, test.purge, *, *, deny
# bob and erin lead: they approve in prod. carol holds nothing.
g, {subject("U0BOB")}, role:lead, *
g, {subject("U0ERIN")}, role:lead, *
p, role:lead, prod, test.*, *, approve, allow
p, role:lead, staging, test.*, *, run, allow
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """The Slack tests' policy, with ``user:TEAM/USER`` subjects as the Slack front makes them."""
    return write_policy(tmp_path / "policies", SLACK_POLICY)


class GatedConnector(ScriptedConnector):
    """The scripted test actions, and ``test.deploy``, which runs until the test opens its gate."""

    def __init__(self, name: str = "test") -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.deploying = asyncio.Event()

    def actions(self) -> Sequence[Action]:
        deploy = Action(
            f"{self.name}.deploy",
            "Deploy a service.",
            ServiceParams,
            self._deploy,
            risk="write",
            resource_param="service",
            timeout=10.0,
            examples=("deploy {service}",),
        )
        return (*super().actions(), deploy)

    async def _deploy(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        assert isinstance(params, ServiceParams)
        self.calls[f"{self.name}.deploy"] += 1
        self.deploying.set()
        await self.gate.wait()
        return ActionResult(output=f"deployed {params.service} to {ctx.environment}")


@pytest.fixture
def connector() -> GatedConnector:
    return GatedConnector()


@pytest.fixture
async def sim() -> AsyncIterator[SlackSimulator]:
    async with SlackSimulator() as simulator:
        yield simulator


@pytest.fixture
def options(sim: SlackSimulator, tmp_path: Path) -> SlackOptions:
    """Options as ``lam serve`` would build them, pointed at the simulator, polling fast."""
    return SlackOptions(
        bot_token=sim.bot_token,
        signing_secret=SIGNING_SECRET,
        api_url=sim.api_url,
        audit_channel="C0AUDIT",
        channel_environments={"C0PROD": "prod", "C0OPS": "staging"},
        approver_groups={"role:lead": "leads"},
        poll_interval=0.02,
        update_interval=0.02,
        lease_ttl=5.0,
        page_size=3,
    )


@dataclass
class Lam:
    """LAM's Slack front running against the simulator, and ways to talk to it as Slack."""

    sim: SlackSimulator
    service: SlackService
    engine: Engine
    transport: Transport
    base_url: str
    """The HTTP server: events and health over HTTP, health alone in Socket Mode."""

    @property
    def events_url(self) -> str:
        return self.base_url + EVENTS_PATH

    async def event(
        self, event: Mapping[str, Any], *, event_id: str | None = None, retry: int | None = None
    ) -> int:
        """Deliver an event; the HTTP status, or 200 once the Socket Mode envelope is acked."""
        if self.transport == "http":
            delivery = await self.sim.send_event(
                self.events_url, event, event_id=event_id, retry_num=retry
            )
            return delivery.status
        envelope = self.sim.event_callback(event, event_id=event_id)
        await self.sim.socket_send("events_api", envelope, retry_attempt=retry or 0)
        return 200

    async def command(self, text: str, *, user: str = "U0ALICE", channel: str = "C0OPS") -> int:
        if self.transport == "http":
            delivery = await self.sim.send_command(
                self.events_url, "/lam", text, user=user, channel=channel
            )
            return delivery.status
        payload = self.sim.command_payload("/lam", text, user=user, channel=channel)
        await self.sim.socket_send("slash_commands", payload)
        return 200

    async def interaction(self, payload: Mapping[str, Any]) -> tuple[int, Any]:
        """Deliver an interaction; the status and the response body (or ack payload)."""
        if self.transport == "http":
            delivery = await self.sim.send_interaction(self.events_url, payload)
            if delivery.status == 200 and delivery.body.startswith("{"):
                return delivery.status, delivery.json()
            return delivery.status, delivery.body
        ack = await self.sim.socket_send("interactive", payload)
        return 200, ack.payload

    async def click(
        self,
        action_id: str,
        value: str,
        *,
        user: str,
        channel: str,
        message_ts: str | None,
    ) -> int:
        payload = self.sim.block_actions_payload(
            action_id, value, user=user, channel=channel, message_ts=message_ts
        )
        status, _ = await self.interaction(payload)
        return status

    async def idle(self) -> None:
        """Wait until every piece of work a listener handed off has finished."""
        await self.service.idle()


@pytest.fixture(params=["http", "socket"])
def transport(request: pytest.FixtureRequest) -> Transport:
    value: Transport = request.param
    return value


StartLam = Callable[..., Any]


@pytest.fixture
async def start_lam(
    sim: SlackSimulator, options: SlackOptions, make_engine: EngineFactory
) -> AsyncIterator[StartLam]:
    """Start LAM's front (``transport`` ``http`` or ``socket``); it stops after the test."""
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def start(
            transport: Transport = "http",
            *,
            engine_options: Mapping[str, Any] | None = None,
            **changes: Any,
        ) -> Lam:
            chosen = replace(options, **changes)
            if transport == "socket":
                chosen = replace(chosen, app_token=sim.app_token)
            engine = make_engine(**(engine_options or {}))
            service = await stack.enter_async_context(open_service(engine, chosen, session))
            url = await stack.enter_async_context(
                running(service, chosen, host="127.0.0.1", port=0, health_port=None)
            )
            if transport == "socket":
                await sim.wait_for_socket()
            return Lam(sim, service, engine, transport, url)

        yield start


@pytest.fixture(params=["inline", "ingress"])
def ingress_process(request: pytest.FixtureRequest) -> bool:
    """Whether deliveries are acknowledged in the ingress process (``lam serve``'s default)."""
    return bool(request.param == "ingress")


@pytest.fixture
async def lam(start_lam: StartLam, transport: Transport, ingress_process: bool) -> Lam:
    """LAM's front over each transport in turn, taking deliveries in this process and in
    the ingress process."""
    started: Lam = await start_lam(transport, ingress_process=ingress_process)
    return started


@pytest.fixture
async def lam_http(start_lam: StartLam) -> Lam:
    """LAM's front over HTTP (for what only HTTP has: signatures, status codes)."""
    started: Lam = await start_lam("http")
    return started


def texts(call: ApiCall) -> str:
    """Everything a message call shows: its text and every text in its blocks."""
    blocks = call.args.get("blocks")
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    found: list[str] = [str(call.args.get("text") or "")]

    def walk(value: object) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("text"), str):
                found.append(value["text"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(blocks)
    return "\n".join(found)


def buttons(call: ApiCall) -> list[tuple[str, str]]:
    """The ``(action_id, value)`` of every button in a message call."""
    blocks = call.args.get("blocks")
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return [
        (element["action_id"], element.get("value", ""))
        for block in blocks or []
        if block.get("type") == "actions"
        for element in block["elements"]
    ]
