"""The ingress process: it acks while the work process is busy, and loses nothing it acked."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from bot.errors import ConfigError
from bot.slack.options import SlackOptions, load_slack_settings
from bot.slack.server import running
from bot.slack.service import SlackService, open_service
from bot.slack.transport import EVENTS_PATH
from tests.conftest import EngineFactory
from tests.support.slack import SlackSimulator


@asynccontextmanager
async def front(
    sim: SlackSimulator, options: SlackOptions, make_engine: EngineFactory
) -> AsyncIterator[SlackService]:
    async with (
        aiohttp.ClientSession() as session,
        open_service(make_engine(), replace(options, ingress_process=True), session) as service,
    ):
        yield service


def planned_threads(sim: SlackSimulator) -> set[str]:
    """The asks LAM answered in their thread (its plan message there)."""
    return {str(c.args.get("thread_ts")) for c in sim.calls_to("chat.postMessage") if c.ok}


def post_signed(sim: SlackSimulator, url: str, payload: dict[str, Any]) -> int:
    """POST a signed event from a plain thread, outside the event loop; its HTTP status."""
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", **sim.signer.headers(body)},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


async def test_acks_while_the_work_process_cannot_run(
    sim: SlackSimulator, options: SlackOptions, make_engine: EngineFactory
) -> None:
    """With the work process's event loop frozen, every mention is still acked, and its
    work is done once the loop runs again."""
    async with (
        front(sim, options, make_engine) as service,
        running(service, service.front.options, host="127.0.0.1", port=0, health_port=None) as url,
    ):
        mentions = [sim.app_mention(f"ask number {n}") for n in range(5)]
        statuses: list[int | str] = []

        def slack() -> None:
            for mention in mentions:
                try:
                    statuses.append(
                        post_signed(sim, url + EVENTS_PATH, sim.event_callback(mention))
                    )
                except OSError as error:
                    statuses.append(str(error))

        sender = threading.Thread(target=slack)
        sender.start()
        # Blocks this process's event loop, where the work (and, inline, the acks) runs.
        sender.join()
        assert statuses == [200] * 5

        await service.idle()
        assert {str(m["ts"]) for m in mentions} <= planned_threads(sim)


async def test_deliveries_acked_before_stopping_are_all_worked(
    sim: SlackSimulator, options: SlackOptions, make_engine: EngineFactory
) -> None:
    """Leaving the ingress right after twenty acks: every one of them is planned."""
    async with front(sim, options, make_engine) as service:
        async with running(
            service, service.front.options, host="127.0.0.1", port=0, health_port=None
        ) as url:
            mentions = [sim.app_mention(f"ask number {n}") for n in range(20)]
            deliveries = await asyncio.gather(
                *(sim.send_event(url + EVENTS_PATH, m) for m in mentions)
            )
            assert [d.status for d in deliveries] == [200] * 20
        await service.front.background.idle()
        assert {str(m["ts"]) for m in mentions} <= planned_threads(sim)


async def test_a_killed_ingress_is_reported_and_what_it_acked_is_worked(
    sim: SlackSimulator, options: SlackOptions, make_engine: EngineFactory
) -> None:
    """SIGTERM leaves the ingress serving (its parent stops it); after kill -9 the loss
    is reported with the exit code, and the mention it acked first is still planned."""
    lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    async with (
        front(sim, options, make_engine) as service,
        running(
            service,
            service.front.options,
            host="127.0.0.1",
            port=0,
            health_port=None,
            ingress_lost=lost.set_result,
        ) as url,
    ):
        assert service.ingress is not None
        os.kill(service.ingress.pid, signal.SIGTERM)
        mention = sim.app_mention("ask before the end")
        assert (await sim.send_event(url + EVENTS_PATH, mention)).status == 200

        os.kill(service.ingress.pid, signal.SIGKILL)
        assert await asyncio.wait_for(lost, 10) == (
            "the Slack ingress process exited on its own with code -9"
        )
        await service.front.background.idle()
        assert str(mention["ts"]) in planned_threads(sim)


async def test_health_answers_come_from_the_work_process(
    sim: SlackSimulator, options: SlackOptions, make_engine: EngineFactory
) -> None:
    """/readyz names the work process's checks, /metrics is its registry, /healthz the
    ingress's own."""
    async with (
        front(sim, options, make_engine) as service,
        running(service, service.front.options, host="127.0.0.1", port=0, health_port=None) as url,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(url + "/healthz") as health:
            assert (health.status, await health.json()) == (200, {"status": "ok"})
        async with session.get(url + "/readyz") as ready:
            body = await ready.json()
            assert ready.status == 200 and body["checks"]["store"] == "ok"
        async with session.get(url + "/metrics") as scraped:
            assert scraped.status == 200
            assert "lam_requests_total" in await scraped.text()
        await service.front.engine.store.aclose()
        async with session.get(url + "/readyz") as ready:
            body = await ready.json()
            assert ready.status == 503 and body["checks"]["store"].startswith("unreachable")


async def test_a_port_in_use_stops_start_up_naming_it(
    sim: SlackSimulator, options: SlackOptions, make_engine: EngineFactory
) -> None:
    """The ingress cannot listen: start-up fails with the port in the message."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with front(sim, options, make_engine) as service:
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
                async with running(
                    service, service.front.options, host="127.0.0.1", port=port, health_port=None
                ):
                    pass


async def test_a_refused_app_token_stops_start_up_naming_it(
    sim: SlackSimulator, options: SlackOptions, make_engine: EngineFactory
) -> None:
    """Socket Mode with an app token Slack refuses: start-up fails naming SLACK_APP_TOKEN."""
    refused = replace(options, app_token="xapp-1-not-the-right-one")
    async with front(sim, refused, make_engine) as service:
        with pytest.raises(ConfigError, match="SLACK_APP_TOKEN was refused by Slack"):
            async with running(
                service, service.front.options, host="127.0.0.1", port=0, health_port=None
            ):
                pass


def test_the_ingress_is_a_setting_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """LAM_SLACK_INGRESS is ``process`` unset, ``inline`` folds it in, anything else stops
    start-up naming the setting."""
    monkeypatch.delenv("LAM_SLACK_INGRESS", raising=False)
    assert load_slack_settings().lam_slack_ingress == "process"
    monkeypatch.setenv("LAM_SLACK_INGRESS", "inline")
    assert load_slack_settings().lam_slack_ingress == "inline"
    monkeypatch.setenv("LAM_SLACK_INGRESS", "thread")
    with pytest.raises(ConfigError, match="LAM_SLACK_INGRESS"):
        load_slack_settings()


async def test_a_bad_configuration_is_refused_without_quoting_it() -> None:
    """The child names the fields of a bad configuration, never their values (secrets)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.slack.ingress",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    said, _ = await process.communicate(b'{"bot_token": "xoxb-planted-secret-1234"}\n')
    assert process.returncode == 0
    failed = json.loads(said)["failed"]
    assert failed.startswith("the Slack ingress process got a bad configuration: listen")
    assert "xoxb-planted" not in failed
