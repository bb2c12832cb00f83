"""``serve(settings)``, as ``lam serve`` runs it: settings from the environment, Socket Mode."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import aiohttp
import pytest

from bot.config import Settings
from bot.slack.server import serve
from tests.slack.conftest import texts
from tests.support.slack import SlackSimulator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_serve_in_socket_mode(
    sim: SlackSimulator, policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve() connects over Socket Mode, answers a mention in its thread, and serves health."""
    env = {
        "LAM_HOME": str(tmp_path / "home"),
        "LAM_POLICY_DIR": str(policy_dir),
        "SLACK_BOT_TOKEN": sim.bot_token,
        "SLACK_APP_TOKEN": sim.app_token,
        "SLACK_API_URL": sim.api_url,
        "LAM_AUDIT_CHANNEL": "C0AUDIT",
        "LAM_SLACK_POLL_SECONDS": "0.02",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    health_port = free_port()
    serving = asyncio.create_task(serve(Settings(), health_port=health_port, host="127.0.0.1"))
    try:
        await sim.wait_for_socket()
        mention = sim.app_mention("what is the meaning of life")
        await sim.socket_send("events_api", sim.event_callback(mention))
        await sim.wait_for_call("chat.update", lambda c: "could not be planned" in texts(c))
        await sim.wait_for_call("chat.postMessage", lambda c: c.args.get("channel") == "C0AUDIT")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{health_port}/readyz") as response,
        ):
            assert response.status == 200
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    assert (tmp_path / "home" / "lam.db").exists()
    assert (tmp_path / "home" / "slack-state.json").exists()
