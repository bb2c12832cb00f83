"""Handed-off Slack work: a bounded number runs at once, the rest queues, nothing is lost."""

from __future__ import annotations

import asyncio
import contextvars
import warnings

import pytest
import structlog

from bot.errors import ConfigError
from bot.metrics import REGISTRY
from bot.slack._tasks import Background
from bot.slack.options import SlackSettings, load_slack_settings

LONG = 60.0
"""A slot time no test reaches, so that only the concurrency bound decides what starts."""


def queued_gauge() -> float:
    value = REGISTRY.get_sample_value("lam_slack_work_queued")
    assert value is not None
    return value


class Gate:
    """Work that counts how many of its kind run at once and waits to be let through."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.running = 0
        self.most = 0
        self.started = 0
        self.finished: list[int] = []
        self.started_changed = asyncio.Event()

    async def work(self, number: int) -> None:
        self.running += 1
        self.started += 1
        self.most = max(self.most, self.running)
        self.started_changed.set()
        try:
            await self.open.wait()
            # Several slices, like real work between its awaits.
            for _ in range(3):
                await asyncio.sleep(0)
            self.finished.append(number)
        finally:
            self.running -= 1

    async def wait_started(self, count: int) -> None:
        while self.started < count:
            self.started_changed.clear()
            await self.started_changed.wait()


async def test_no_more_than_the_bound_run_and_idle_waits_for_the_queue() -> None:
    """With 3 slots and 12 deliveries, 3 run, 9 queue (shown by the gauge), and idle() returns
    only after all 12 are done, never more than 3 at once."""
    background, gate = Background(3, slot_seconds=LONG), Gate()
    before = queued_gauge()
    for number in range(12):
        background.spawn(gate.work(number), name=f"work:{number}")
    await gate.wait_started(3)
    # Let everything runnable run; nothing more starts while the three wait.
    for _ in range(10):
        await asyncio.sleep(0)
    assert (gate.started, gate.running, background.queued, background.pending) == (3, 3, 9, 12)
    assert queued_gauge() - before == 9

    idle = asyncio.ensure_future(background.idle())
    await asyncio.sleep(0)
    assert not idle.done()
    gate.open.set()
    await asyncio.wait_for(idle, 10)
    assert sorted(gate.finished) == list(range(12))
    assert gate.most == 3
    assert background.pending == 0 and queued_gauge() == before


async def test_a_failing_piece_frees_its_slot_and_is_logged() -> None:
    """With one slot, work that raises is logged and the work queued behind it still runs."""
    background = Background(1, slot_seconds=LONG)
    ran = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("boom")

    async def succeeds() -> None:
        ran.set()

    with structlog.testing.capture_logs() as logs:
        background.spawn(fails(), name="fails")
        background.spawn(succeeds(), name="succeeds")
        assert background.queued == 1
        await asyncio.wait_for(background.idle(), 10)
    assert ran.is_set()
    failed = [entry for entry in logs if entry["event"] == "slack.background_failed"]
    assert [entry["task"] for entry in failed] == ["fails"]


async def test_long_work_gives_its_slot_to_the_queue() -> None:
    """Work still running after the slot time lets the next piece start, so one long
    runbook does not hold every delivery behind it."""
    background, gate = Background(1, slot_seconds=0.05), Gate()
    quick_done = asyncio.Event()

    async def quick() -> None:
        quick_done.set()

    background.spawn(gate.work(0), name="long")
    background.spawn(quick(), name="quick")
    assert background.queued == 1
    await asyncio.wait_for(quick_done.wait(), 10)
    assert gate.running == 1 and not gate.finished
    gate.open.set()
    await asyncio.wait_for(background.idle(), 10)
    assert gate.finished == [0]


async def test_queued_work_keeps_the_log_context_it_was_handed_off_in() -> None:
    """Work that waited in the queue sees the context variables (the delivery's log ids) of
    the listener that spawned it, not those current when it starts."""
    delivery: contextvars.ContextVar[str] = contextvars.ContextVar("delivery")
    background, gate = Background(1, slot_seconds=LONG), Gate()
    seen: list[str] = []

    async def record() -> None:
        seen.append(delivery.get())

    delivery.set("first")
    background.spawn(gate.work(0), name="blocking")
    delivery.set("second")
    background.spawn(record(), name="second")
    delivery.set("third")
    gate.open.set()
    await asyncio.wait_for(background.idle(), 10)
    assert seen == ["second"]


async def test_aclose_finishes_queued_work_within_the_grace() -> None:
    """Closing lets queued work run to its end when it fits in the grace time."""
    background, gate = Background(2, slot_seconds=LONG), Gate()
    for number in range(6):
        background.spawn(gate.work(number), name=f"work:{number}")
    closing = asyncio.ensure_future(background.aclose(grace=30))
    await gate.wait_started(2)
    gate.open.set()
    await asyncio.wait_for(closing, 10)
    assert sorted(gate.finished) == list(range(6))


async def test_aclose_after_the_grace_cancels_running_and_drops_queued_work() -> None:
    """Past the grace, running work is cancelled and queued work is closed unstarted (no
    'never awaited' warning), logged with how many, and the gauge goes back down."""
    background, gate = Background(1, slot_seconds=LONG), Gate()
    before = queued_gauge()
    for number in range(3):
        background.spawn(gate.work(number), name=f"work:{number}")
    await gate.wait_started(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(background.aclose(grace=0), 10)
    assert (gate.started, gate.running, gate.finished) == (1, 0, [])
    assert background.pending == 0 and queued_gauge() == before
    dropped = [entry for entry in logs if entry["event"] == "slack.background_dropped"]
    assert [entry["queued"] for entry in dropped] == [2]


def test_concurrency_is_a_setting_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """LAM_SLACK_CONCURRENCY sets the bound (4 unset); 0 stops start-up naming the setting."""
    monkeypatch.delenv("LAM_SLACK_CONCURRENCY", raising=False)
    assert SlackSettings().lam_slack_concurrency == 4
    monkeypatch.setenv("LAM_SLACK_CONCURRENCY", "8")
    assert load_slack_settings().lam_slack_concurrency == 8
    monkeypatch.setenv("LAM_SLACK_CONCURRENCY", "0")
    with pytest.raises(ConfigError, match="LAM_SLACK_CONCURRENCY"):
        load_slack_settings()
    with pytest.raises(ValueError, match="concurrency must be at least 1, not 0"):
        Background(0)
