"""``serve(settings)``, as ``lam serve`` runs it: in-process over Socket Mode, and the command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from bot.config import Settings
from bot.slack.server import serve
from bot.slack.transport import EVENTS_PATH
from bot.store.sqlite import SqliteStore
from tests.slack.conftest import texts
from tests.support.slack import SIGNING_SECRET, SlackSimulator
from tests.support.slack_process import lam_serve


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def audit_caught_up(home: Path) -> tuple[int, str | None]:
    """The audit head of the SQLite store in ``home``, and the audit channel's position."""
    store = await SqliteStore.open(home / "lam.db")
    try:
        return (await store.audit_head())[0], await store.recall("slack:audit:C0AUDIT")
    finally:
        await store.aclose()


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
        # serve() runs in the test process here: its priority stays as it is.
        "LAM_SLACK_WORK_NICE": "0",
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
    # What the front keeps lives in the store now, not in a file of its own.
    assert not (tmp_path / "home" / "slack-state.json").exists()


def threads(pid: int) -> list[int]:
    return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]


def children(pid: int) -> list[int]:
    return [
        int(child)
        for thread in threads(pid)
        for child in Path(f"/proc/{pid}/task/{thread}/children").read_text().split()
    ]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def niceness(pid: int, thread: int | None = None) -> int:
    """The nice value of a process (or one of its threads), from ``/proc``."""
    stat = Path(f"/proc/{pid}" + (f"/task/{thread}" if thread else "") + "/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])


async def test_lam_serve_over_http(sim: SlackSimulator, policy_dir: Path, tmp_path: Path) -> None:
    """``lam serve`` over HTTP plans a signed mention in its thread, runs its work below its
    ingress's CPU priority, and exits 0 on SIGTERM, its ingress gone too."""
    home = tmp_path / "home"
    env = {
        "LAM_HOME": str(home),
        "LAM_POLICY_DIR": str(policy_dir),
        "SLACK_BOT_TOKEN": sim.bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": sim.api_url,
        "LAM_AUDIT_CHANNEL": "C0AUDIT",
        "LAM_SLACK_POLL_SECONDS": "0.02",
    }
    async with lam_serve(env) as lam:
        forged = await sim.send_raw(lam.url + EVENTS_PATH, "{}", sign=False)
        assert forged.status == 401
        mention = sim.app_mention("what is the meaning of life", channel="C0OPS")
        delivery = await sim.send_event(lam.url + EVENTS_PATH, mention)
        assert delivery.status == 200
        plan = await sim.wait_for_call(
            "chat.postMessage", lambda c: c.args.get("thread_ts") == mention["ts"]
        )
        await sim.wait_for_call(
            "chat.update",
            lambda c: (
                c.args.get("ts") == plan.response["ts"] and "could not be planned" in texts(c)
            ),
        )
        # The work runs at a lower CPU priority than the ingress that acks, every thread.
        [ingress] = children(lam.process.pid)
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert niceness(ingress) == ours
        work = {niceness(lam.process.pid, thread) for thread in threads(lam.process.pid)}
        assert work == {min(19, ours + 10)}
        lam.process.send_signal(signal.SIGTERM)
        assert await lam.process.wait() == 0
        await lam.wait_for_log("shutdown.finished")
        assert not alive(ingress)
    # Stopping brought the audit channel up to date, and said where it got to.
    head, position = await audit_caught_up(home)
    assert head > 0 and position == str(head)


async def test_lam_serve_exits_1_when_its_ingress_dies(
    sim: SlackSimulator, policy_dir: Path, tmp_path: Path
) -> None:
    """A killed ingress process stops ``lam serve`` in order, exit 1, saying what happened."""
    env = {
        "LAM_HOME": str(tmp_path / "home"),
        "LAM_POLICY_DIR": str(policy_dir),
        "SLACK_BOT_TOKEN": sim.bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": sim.api_url,
    }
    async with lam_serve(env) as lam:
        [ingress] = children(lam.process.pid)
        os.kill(ingress, signal.SIGKILL)
        assert await lam.process.wait() == 1
        lost = await lam.wait_for_log("slack.ingress_lost")
        assert lost["exit_code"] == -9
        await lam.wait_for_log("shutdown.finished")
        said = [line["text"] for line in lam.logs if line["event"] == "(not json)"]
        assert "error: the Slack ingress process exited on its own with code -9" in said
