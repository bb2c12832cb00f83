"""A request delivered more than once (a Slack retry, two replicas) is recorded and run once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.engine import Engine, EngineOptions
from bot.errors import DuplicateRequest
from bot.models import Request
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from bot.store.sqlite import SqliteStore
from connectors import Catalog
from tests.conftest import EngineFactory, RedisEngineFactory
from tests.support.actions import ScriptedConnector

EVENT_KEY = "slack:T01:Ev0001"


def delivery(text: str = "noop in staging") -> Request:
    """One delivery of the same Slack event: the front makes a new request each time."""
    return Request(text=text, requester="user:alice", source="slack", channel="C01")


@pytest.fixture(params=["sqlite", "redis"])
async def any_engine(
    request: pytest.FixtureRequest,
    make_engine: EngineFactory,
    open_redis_engine: RedisEngineFactory,
) -> Engine:
    """The engine on the embedded SQLite store, then on a Redis store of the test's own."""
    if request.param == "sqlite":
        return make_engine()
    return await open_redis_engine()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_five_concurrent_deliveries_create_and_run_one_request(
    any_engine: Engine, connector: ScriptedConnector
) -> None:
    """Five deliveries of one event at once: one request is stored and run, four are duplicates."""
    outcomes = await asyncio.gather(
        *(any_engine.ask(delivery(), dedupe_key=EVENT_KEY) for _ in range(5)),
        return_exceptions=True,
    )

    records = [o for o in outcomes if not isinstance(o, BaseException)]
    duplicates = [o for o in outcomes if isinstance(o, DuplicateRequest)]
    assert len(records) == 1, outcomes
    assert len(duplicates) == 4, outcomes
    (record,) = records
    assert record.state == "succeeded"
    assert {duplicate.request_id for duplicate in duplicates} == {record.id}
    assert all(duplicate.dedupe_key == EVENT_KEY for duplicate in duplicates)
    assert connector.calls["test.noop"] == 1
    assert [r.id for r in await any_engine.store.history()] == [record.id]
    assert {e.request_id async for e in any_engine.store.audit_events()} == {record.id}
    assert await any_engine.verify_audit() == 7


async def test_a_redelivery_after_the_first_finished_is_still_a_duplicate(
    any_engine: Engine, connector: ScriptedConnector
) -> None:
    """A retry arriving after the request has run is dropped with a message naming the request."""
    first = await any_engine.ask(delivery(), dedupe_key=EVENT_KEY)
    head = await any_engine.store.audit_head()
    with pytest.raises(DuplicateRequest) as raised:
        await any_engine.ask(delivery(), dedupe_key=EVENT_KEY)
    assert raised.value.request_id == first.id
    assert f"request {first.id!r}" in str(raised.value)
    assert EVENT_KEY in str(raised.value)
    assert await any_engine.store.audit_head() == head
    assert connector.calls["test.noop"] == 1


async def test_requests_without_a_dedupe_key_are_never_duplicates(
    any_engine: Engine, connector: ScriptedConnector
) -> None:
    """Two identical requests asked without a key (the console) both run."""
    await asyncio.gather(any_engine.ask(delivery()), any_engine.ask(delivery()))
    assert connector.calls["test.noop"] == 2
    assert len(await any_engine.store.history()) == 2


async def test_a_duplicate_of_a_request_that_needs_approval_stores_nothing(
    any_engine: Engine,
) -> None:
    """The dedupe claim comes before the request is stored, whatever the request then needs."""
    waiting = await any_engine.ask(delivery("restart web in prod"), dedupe_key=EVENT_KEY)
    assert waiting.state == "awaiting_approval"
    with pytest.raises(DuplicateRequest):
        await any_engine.ask(delivery("restart web in prod"), dedupe_key=EVENT_KEY)
    assert [r.id for r in await any_engine.store.history()] == [waiting.id]


async def test_the_key_is_free_again_once_the_dedupe_ttl_has_passed(
    tmp_path: Path, policy_dir: Path, connector: ScriptedConnector
) -> None:
    """With the store's clock past ``dedupe_ttl``, the same key makes a new request."""
    clock = Clock()
    store = await SqliteStore.open(tmp_path / "lam.db", clock=clock)
    engine = Engine(
        store=store,
        policy=Policy.load(policy_dir),
        catalog=Catalog([connector]),
        planner=AliasPlanner(),
        options=EngineOptions(dedupe_ttl=timedelta(minutes=5)),
    )
    try:
        first = await engine.ask(delivery(), dedupe_key=EVENT_KEY)
        clock.now += timedelta(minutes=5) - timedelta(microseconds=1)
        with pytest.raises(DuplicateRequest):
            await engine.ask(delivery(), dedupe_key=EVENT_KEY)
        clock.now += timedelta(microseconds=1)
        second = await engine.ask(delivery(), dedupe_key=EVENT_KEY)
        assert second.id != first.id
        assert connector.calls["test.noop"] == 2
    finally:
        await store.aclose()
