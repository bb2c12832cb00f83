"""``/metrics``: the series LAM exports move as requests are decided, run, queued and audited.

The registry is one per process, so every check compares two scrapes of a running app.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from bot.config import Settings
from bot.engine import Engine
from bot.health import Health, health_application, listening
from bot.models import Request
from bot.store.redis_jobs import RedisJobQueue
from bot.wiring import build_catalog, close_connectors
from tests.support.waiting import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    """Every sample of ``/metrics`` by name and labels; the content type must be Prometheus'."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def change(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def serving(engine: Engine) -> AbstractAsyncContextManager[str]:
    """The health app of ``engine`` on a free loopback port; its base URL."""
    return listening(health_application(Health(engine)), "127.0.0.1", 0)


@pytest.fixture
async def metrics_url(engine: Engine) -> AsyncIterator[str]:
    async with serving(engine) as url:
        yield url


def ask(text: str, environment: str, requester: str = "user:alice") -> Request:
    return Request(text=text, requester=requester, environment=environment)


async def test_decisions_outcomes_steps_and_audit_events_are_counted(
    engine: Engine, metrics_url: str
) -> None:
    """Allowed, approved, denied and failed requests move their decision, outcome, step and
    audit series by exactly what happened."""
    before = await scrape(metrics_url)
    assert (await engine.ask(ask("noop", "staging"))).state == "succeeded"
    waiting = await engine.ask(ask("restart web", "prod"))
    assert waiting.state == "awaiting_approval"
    assert (await engine.approve(waiting.id, "user:bob")).state == "succeeded"
    assert (await engine.ask(ask("purge web", "prod"))).state == "denied"
    assert (await engine.ask(ask("break", "staging"))).state == "failed"
    after = await scrape(metrics_url)

    decisions = {
        decision: change(before, after, "lam_decisions_total", decision=decision)
        for decision in ("allow", "needs_approval", "deny")
    }
    assert decisions == {"allow": 2, "needs_approval": 1, "deny": 1}
    outcomes = {
        outcome: change(before, after, "lam_requests_total", outcome=outcome)
        for outcome in ("succeeded", "failed", "denied", "rejected")
    }
    assert outcomes == {"succeeded": 2, "failed": 1, "denied": 1, "rejected": 0}
    steps = {
        (action, status): change(
            before, after, "lam_step_duration_seconds_count", action=action, status=status
        )
        for action, status in [
            ("test.noop", "succeeded"),
            ("test.restart", "succeeded"),
            ("test.fail", "failed"),
            ("test.fail", "succeeded"),
        ]
    }
    assert steps == {
        ("test.noop", "succeeded"): 1,
        ("test.restart", "succeeded"): 1,
        ("test.fail", "failed"): 1,
        ("test.fail", "succeeded"): 0,
    }
    assert change(before, after, "lam_approval_wait_seconds_count") == 1

    # Every event in the (fresh) store was counted once, under its kind.
    stored = Counter([event.kind async for event in engine.store.audit_events()])
    counted = {kind: change(before, after, "lam_audit_events_total", kind=kind) for kind in stored}
    assert counted == dict(stored)
    exported = {dict(labels)["kind"] for name, labels in after if name == "lam_audit_events_total"}
    assert all(
        change(before, after, "lam_audit_events_total", kind=kind) == 0
        for kind in exported - set(stored)
    )


async def test_queue_depth_is_sampled_at_each_scrape_and_reclaims_are_counted(
    queued_engine: Engine,
) -> None:
    """The depth counts jobs not yet delivered; a job taken over from a silent worker counts
    as reclaimed."""
    queue = queued_engine.jobs
    assert isinstance(queue, RedisJobQueue)
    async with serving(queued_engine) as url:
        assert (await queued_engine.ask(ask("noop", "staging"))).state == "approved"
        start = await scrape(url)
        assert value(start, "lam_job_queue_depth") == 1

        taken = await queue.take("silent", 0)
        assert taken is not None
        assert value(await scrape(url), "lam_job_queue_depth") == 0

        # The only job is the silent worker's: the next take is its reclaim, once it idled.
        reclaimed = await eventually(
            lambda: queue.take("alive", 0.05), "the silent worker's job to be reclaimed"
        )
        assert (reclaimed.id, reclaimed.deliveries) == (taken.id, 2)
        after = await scrape(url)
        assert change(start, after, "lam_jobs_reclaimed_total") == 1
        assert value(after, "lam_job_queue_depth") == 0

        for _ in range(2):
            await queued_engine.ask(ask("noop", "staging"))
        assert value(await scrape(url), "lam_job_queue_depth") == 2


async def test_connector_failures_are_counted_at_start(tmp_path: Path, engine: Engine) -> None:
    """A connector that cannot start sets lam_connectors_failed; a clean start clears it."""
    config = tmp_path / "lam.yaml"
    config.write_text(
        "connectors:\n  - {type: telnet, name: old}\n  - {type: shell, name: shell}\n",
        encoding="utf-8",
    )
    async with serving(engine) as url:
        catalog = await build_catalog(Settings.model_validate({"LAM_CONFIG": str(config)}))
        await close_connectors(catalog)
        assert set(catalog.failures) == {"old"}
        assert value(await scrape(url), "lam_connectors_failed") == 1
        catalog = await build_catalog(Settings.model_validate({}))
        await close_connectors(catalog)
        assert value(await scrape(url), "lam_connectors_failed") == 0
