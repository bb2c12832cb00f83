"""What only ``RedisStore`` promises: prefixes, indexes, retention, tamper checks, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import WatchError

from bot.audit import GENESIS_HASH, verify, verify_store
from bot.errors import AuditChainBroken, ConfigError, StoreUnavailable, UnknownRequest
from bot.models import AuditEvent, Intent, Plan, RequestRecord, State, Step
from bot.store import redis as redis_module
from bot.store.redis import RedisStore, mask_url
from tests.support.records import make_event, make_record
from tests.support.redis_server import RedisServer, free_port


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    opened = await RedisStore.open(redis_url, prefix=redis_prefix, audit_page_size=3)
    yield opened
    await opened.aclose()


def planned(record: RequestRecord, *actions: str, environment: str = "staging") -> RequestRecord:
    steps = tuple(
        Step(id=f"s{n}", action=action, args={}, environment=environment, risk="write")
        for n, action in enumerate(actions)
    )
    intent = Intent(
        goal="restart api",
        environment=environment,
        environment_source="text",
        dry_run=False,
        requester=record.request.requester,
    )
    return record.model_copy(
        update={"state": "planned", "intent": intent, "plan": Plan(steps=steps, planner="test")}
    )


async def move(store: RedisStore, request_id: str, state: State) -> RequestRecord:
    current = await store.get(request_id)
    changed = current.model_copy(update={"state": state})
    return await store.save(changed, current.version, [make_event(changed, "request.planned")])


async def chain_of(store: RedisStore, length: int) -> RequestRecord:
    """A request whose audit trail is ``length`` events long."""
    record = make_record()
    created = await store.create(record, [make_event(record)])
    for n in range(length - 1):
        current = await store.get(record.id)
        await store.save(current, current.version, [make_event(current, actor=f"step-{n}")])
    return created


async def verify_from(store: RedisStore) -> int:
    """The chain verified from the store's checkpoint, as ``lam audit verify`` does."""
    return await verify_store(store)


async def rewrite_entry(raw: aioredis.Redis, key: str, seq: int, **changes: Any) -> None:
    """Rebuild the stream with entry ``seq``'s event changed: streams allow no edit in place."""
    entries = await raw.xrange(key)
    await raw.delete(key)
    for entry_id, fields in entries:
        if entry_id == f"{seq}-0":
            event = AuditEvent.model_validate_json(fields["event"])
            fields = {**fields, "event": event.model_copy(update=changes).model_dump_json()}
        await raw.xadd(key, fields, id=entry_id)


async def broken(store: RedisStore) -> AuditChainBroken:
    with pytest.raises(AuditChainBroken) as caught:
        await verify(store.audit_events(), await store.audit_head())
    return caught.value


async def test_prefixes_keep_two_installations_in_one_redis_apart(
    redis_url: str, redis_prefix: str
) -> None:
    """Two stores under different prefixes share a server but no request and no chain."""
    one = await RedisStore.open(redis_url, prefix=f"{redis_prefix}one:")
    other = await RedisStore.open(redis_url, prefix=f"{redis_prefix}other:")
    try:
        record = make_record()
        await one.create(record, [make_event(record)])
        with pytest.raises(UnknownRequest):
            await other.get(record.id)
        assert await other.history() == []
        assert await other.audit_head() == (0, "")

        # The same id is free in the other installation, and its chain starts at 1.
        await other.create(record, [make_event(record), make_event(record, "request.planned")])
        assert await verify(one.audit_events(), await one.audit_head()) == 1
        assert await verify(other.audit_events(), await other.audit_head()) == 2
    finally:
        await one.aclose()
        await other.aclose()


async def test_state_indexes_follow_every_state_change(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """A request sits in exactly the index of its current state, alone and with its requester."""
    alice, bob = make_record("user:alice", minute=0), make_record("user:bob", minute=1)
    for record in (alice, bob):
        await store.create(record, [make_event(record)])
    await move(store, alice.id, "planned")
    await move(store, alice.id, "approved")

    def ids(records: list[RequestRecord]) -> list[str]:
        return [record.id for record in records]

    assert ids(await store.history(states=frozenset({"received"}))) == [bob.id]
    assert ids(await store.history(states=frozenset({"planned"}))) == []
    assert ids(await store.history(states=frozenset({"approved", "received"}))) == [
        bob.id,
        alice.id,
    ]
    assert ids(await store.history(requester="user:alice", states=frozenset({"approved"}))) == [
        alice.id
    ]
    assert await store.history(requester="user:bob", states=frozenset({"approved"})) == []

    indexes = {key.removeprefix(store.prefix) for key in await raw.keys(f"{store.prefix}index:*")}
    members = {key: await raw.zrange(f"{store.prefix}{key}", 0, -1) for key in indexes}
    holding_alice = sorted(
        key for key, names in members.items() if any(alice.id in n for n in names)
    )
    assert holding_alice == [
        "index:all",
        "index:requester:user:alice",
        "index:state:approved",
        "index:state:approved:requester:user:alice",
    ]


async def test_same_microsecond_requests_come_out_newest_stored_first(store: RedisStore) -> None:
    """Requests received at the same instant are listed in reverse order of creation."""
    records = [make_record(f"user:{name}") for name in ("ann", "ben", "cat")]
    for record in records:
        await store.create(record, [make_event(record)])
    assert [r.id for r in await store.history()] == [r.id for r in reversed(records)]


async def test_history_by_action_and_environment_follow_the_plan(store: RedisStore) -> None:
    """Requests are found by the actions and environments of their current plan and intent."""
    restart = make_record(minute=0, environment="staging")
    scale = make_record(minute=1)
    for record in (restart, scale):
        await store.create(record, [make_event(record)])
    first = await store.get(restart.id)
    await store.save(planned(first, "k8s.restart", "k8s.logs"), first.version, [])
    second = await store.get(scale.id)
    await store.save(planned(second, "k8s.scale", environment="prod"), second.version, [])

    assert [r.id for r in await store.history_by_action("k8s.restart")] == [restart.id]
    assert [r.id for r in await store.history_by_action("k8s.logs")] == [restart.id]
    assert [r.id for r in await store.history_by_environment("prod")] == [scale.id]
    assert [r.id for r in await store.history_by_environment("staging")] == [restart.id]

    # A new plan moves the request out of the indexes of the old one.
    current = await store.get(scale.id)
    await store.save(planned(current, "k8s.restart", environment="dev"), current.version, [])
    assert [r.id for r in await store.history_by_action("k8s.restart")] == [scale.id, restart.id]
    assert await store.history_by_action("k8s.scale") == []
    assert await store.history_by_environment("prod") == []
    assert [r.id for r in await store.history_by_environment("dev", limit=1)] == [scale.id]


async def test_audit_events_page_through_a_chain_longer_than_a_page(store: RedisStore) -> None:
    """Events come back in order across pages of the stream, from any starting seq."""
    await chain_of(store, 8)
    assert [event.seq async for event in store.audit_events()] == list(range(1, 9))
    assert [event.seq async for event in store.audit_events(after_seq=3)] == list(range(4, 9))
    assert [event.seq async for event in store.audit_events(after_seq=8)] == []


async def test_trim_keeps_the_rest_of_the_chain_verifiable_from_its_checkpoint(
    store: RedisStore,
) -> None:
    """Trimming moves the checkpoint to the last removed event, and the rest still verifies."""
    await chain_of(store, 10)
    assert await store.audit_checkpoint() == (0, "")
    events = [event async for event in store.audit_events()]

    assert await store.trim(keep_last=4) == 6
    assert await store.audit_checkpoint() == (6, events[5].hash)
    assert [event.seq async for event in store.audit_events()] == [7, 8, 9, 10]
    assert await verify_from(store) == 4
    assert await store.trim(keep_last=4) == 0

    # The chain goes on after a trim, and trimming everything leaves an empty, valid stream.
    record = make_record(minute=5)
    await store.create(record, [make_event(record)])
    assert await store.trim(keep_last=0) == 5
    assert await store.audit_checkpoint() == await store.audit_head()
    assert await verify_from(store) == 0
    await store.append([make_event(record, "request.cancelled")])
    assert await verify_from(store) == 1


async def test_tampering_after_the_cut_or_with_the_checkpoint_is_detected(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """An edited event after the checkpoint, or an edited checkpoint, fails verification."""
    await chain_of(store, 8)
    await store.trim(keep_last=4)
    await rewrite_entry(raw, f"{store.prefix}audit", 6, actor="user:mallory")
    with pytest.raises(AuditChainBroken) as caught:
        await verify_from(store)
    assert caught.value.seq == 6

    await rewrite_entry(raw, f"{store.prefix}audit", 6, actor="step-4")
    assert await verify_from(store) == 4
    await raw.hset(f"{store.prefix}audit:checkpoint", "hash", "0" * 64)
    with pytest.raises(AuditChainBroken) as caught:
        await verify_from(store)
    assert caught.value.seq == 5


async def test_trim_refuses_to_remove_a_chain_that_does_not_verify(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """Retention never erases the evidence: an edited event before the cut stops the trim."""
    await chain_of(store, 6)
    await rewrite_entry(raw, f"{store.prefix}audit", 2, actor="user:mallory")
    with pytest.raises(AuditChainBroken) as caught:
        await store.trim(keep_last=2)
    assert caught.value.seq == 2
    assert await raw.xlen(f"{store.prefix}audit") == 6
    assert await store.audit_checkpoint() == (0, "")


async def test_an_edited_stream_entry_is_caught(store: RedisStore, raw: aioredis.Redis) -> None:
    """An event rewritten by deleting and re-adding the stream's entries fails at that event."""
    await chain_of(store, 4)
    await rewrite_entry(raw, f"{store.prefix}audit", 3, reason="nothing to see")
    error = await broken(store)
    assert (error.seq, error.problem) == (3, "its content does not match its hash (edited)")


async def test_a_deleted_stream_entry_is_caught(store: RedisStore, raw: aioredis.Redis) -> None:
    """An entry removed with XDEL leaves a gap that verification names."""
    await chain_of(store, 4)
    await raw.xdel(f"{store.prefix}audit", "2-0")
    assert (await broken(store)).seq == 3


async def test_a_deleted_last_entry_is_caught_by_the_head(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """Removing the newest entry is caught by the head kept apart from the stream."""
    await chain_of(store, 4)
    await raw.xdel(f"{store.prefix}audit", "4-0")
    assert (await broken(store)).seq == 4


async def test_an_entry_whose_fields_disagree_with_its_event_is_caught(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """An entry whose id, seq or hash field does not match the event it holds is refused."""
    await chain_of(store, 3)
    entries = await raw.xrange(f"{store.prefix}audit")
    await raw.delete(f"{store.prefix}audit")
    for entry_id, fields in entries:
        changed = {**fields, "hash": "f" * 64} if entry_id == "2-0" else fields
        await raw.xadd(f"{store.prefix}audit", changed, id=entry_id)
    assert (await broken(store)).seq == 2
    # Unreadable JSON is named too.
    await raw.xadd(f"{store.prefix}audit", {"seq": 4, "hash": "x", "event": "{"}, id="4-0")
    with pytest.raises(AuditChainBroken, match="not a valid audit event"):
        _ = [event async for event in store.audit_events(after_seq=3)]


async def test_a_foreign_entry_past_the_head_stops_every_write(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    """An entry LAM did not write makes appends refuse, leaving record and head unchanged."""
    created = await chain_of(store, 2)
    head = await store.audit_head()
    await raw.xadd(f"{store.prefix}audit", {"event": "forged"})
    current = await store.get(created.id)
    changed = current.model_copy(update={"state": "planned"})
    with pytest.raises(AuditChainBroken, match="LAM did not write"):
        await store.save(changed, current.version, [make_event(changed, "request.planned")])
    assert await store.get(created.id) == current
    assert await store.audit_head() == head


async def test_two_stores_appending_at_once_never_fork_the_chain(
    redis_url: str, redis_prefix: str
) -> None:
    """Two stores on two connection pools saving 100 requests each keep one contiguous chain."""
    one = await RedisStore.open(redis_url, prefix=redis_prefix)
    other = await RedisStore.open(redis_url, prefix=redis_prefix)
    try:
        records = [make_record(minute=n) for n in range(200)]
        handles = [one, other] * 100
        await asyncio.gather(
            *(h.create(r, [make_event(r)]) for h, r in zip(handles, records, strict=True))
        )

        async def save(handle: RedisStore, record: RequestRecord) -> None:
            current = await handle.get(record.id)
            changed = current.model_copy(update={"state": "planned"})
            await handle.save(changed, current.version, [make_event(changed, "request.planned")])

        await asyncio.gather(*(save(h, r) for h, r in zip(handles, records, strict=True)))

        assert one.retries + other.retries > 0, "the stores never collided on the head"
        assert await verify(one.audit_events(), await other.audit_head()) == 400
        assert len(await one.history(states=frozenset({"planned"}), limit=500)) == 200
    finally:
        await one.aclose()
        await other.aclose()


async def test_a_lost_exec_reply_is_resolved_without_a_second_write(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When EXEC is applied but its reply is lost, the retry finds it applied and writes nothing."""
    record = make_record()
    created = await store.create(record, [make_event(record)])
    real_execute = Pipeline.execute
    lost: list[bool] = []

    async def execute_then_lose_reply(self: Pipeline, raise_on_error: bool = True) -> list[Any]:
        result = await real_execute(self, raise_on_error)
        if self.is_transaction and not lost:
            lost.append(True)
            try:
                raise RedisConnectionError("Connection closed by server.")
            except RedisConnectionError:
                raise WatchError("A ConnectionError occurred while watching") from None
        return result

    monkeypatch.setattr(Pipeline, "execute", execute_then_lose_reply)
    changed = created.model_copy(update={"state": "planned"})
    saved = await store.save(changed, created.version, [make_event(changed, "request.planned")])

    assert lost
    assert await store.get(record.id) == saved
    assert [event.kind async for event in store.audit_events()] == [
        "request.received",
        "request.planned",
    ]


async def test_a_head_that_never_settles_gives_up_with_a_clear_error(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that loses every attempt stops after MAX_ATTEMPTS and stores nothing."""
    record = make_record()

    async def always_beaten(self: Pipeline, raise_on_error: bool = True) -> list[Any]:
        await self.reset()
        raise WatchError("Watched variable changed.")

    monkeypatch.setattr(redis_module, "MAX_ATTEMPTS", 3)
    monkeypatch.setattr(Pipeline, "execute", always_beaten)
    with pytest.raises(StoreUnavailable, match="kept moving: 3 attempts"):
        await store.create(record, [make_event(record)])
    monkeypatch.undo()
    with pytest.raises(UnknownRequest):
        await store.get(record.id)
    assert await store.audit_head() == (0, "")


async def test_unreachable_redis_url_is_a_config_error_with_the_password_masked() -> None:
    """Opening a store on a port nobody listens on names REDIS_URL and hides the password."""
    url = f"redis://lam:hunter22@127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError) as caught:
        await RedisStore.open(url)
    message = str(caught.value)
    assert "REDIS_URL" in message and "redis://lam:***@127.0.0.1" in message
    assert "hunter22" not in message
    with pytest.raises(ConfigError, match="not a Redis URL"):
        await RedisStore.open("http://lam:hunter22@127.0.0.1/0")


async def test_wrong_password_is_a_config_error_and_the_right_one_works(tmp_path: Path) -> None:
    """A server with a password refuses a wrong one at open, and accepts it as user or not."""
    secured = RedisServer(tmp_path / "secured", password="s3cret-pw")
    secured.start()
    try:
        port = secured.port
        with pytest.raises(ConfigError) as caught:
            await RedisStore.open(f"redis://default:wrong-pw@127.0.0.1:{port}/0")
        assert "wrong-pw" not in str(caught.value) and "default:***@" in str(caught.value)
        with pytest.raises(ConfigError):
            await RedisStore.open(f"redis://127.0.0.1:{port}/0")
        for url in (secured.url, f"redis://default:s3cret-pw@127.0.0.1:{port}/0"):
            opened = await RedisStore.open(url)
            assert await opened.audit_head() == (0, "")
            await opened.aclose()
    finally:
        secured.kill()


def test_mask_url_hides_passwords_in_userinfo_and_query() -> None:
    """Passwords are masked wherever a Redis URL can carry them; the rest stays readable."""
    assert mask_url("rediss://app:p%40ss@cache:6380/1") == "rediss://app:***@cache:6380/1"
    assert mask_url("redis://:pw@cache") == "redis://:***@cache"
    assert mask_url("redis://cache/0") == "redis://cache/0"
    assert mask_url("unix:///run/redis.sock?db=1&password=pw") == (
        "unix:///run/redis.sock?db=1&password=***"
    )


async def test_a_restarted_server_fails_calls_clearly_then_serves_again(
    private_redis: RedisServer,
) -> None:
    """While Redis is down every call fails with StoreUnavailable; once it is back, all work."""
    store = await RedisStore.open(private_redis.url, prefix="lam:")
    try:
        record = make_record()
        created = await store.create(record, [make_event(record)])
        private_redis.stop(keep_data=True)

        with pytest.raises(StoreUnavailable, match="cannot reach Redis at 'redis://127.0.0.1"):
            await store.get(record.id)
        changed = created.model_copy(update={"state": "planned"})
        with pytest.raises(StoreUnavailable, match="nothing was changed"):
            await store.save(changed, created.version, [make_event(changed, "request.planned")])

        private_redis.start()
        assert await store.get(record.id) == created
        await store.save(changed, created.version, [make_event(changed, "request.planned")])
        assert await verify(store.audit_events(), await store.audit_head()) == 2
    finally:
        await store.aclose()


async def test_a_crashed_server_leaves_no_connection_wedged(private_redis: RedisServer) -> None:
    """After a kill and a fresh start, the pooled connections reconnect on their own."""
    store = await RedisStore.open(private_redis.url, prefix="lam:")
    try:
        first = make_record()
        await store.create(first, [make_event(first)])
        # Several pooled connections, all of which go stale at once.
        await asyncio.gather(*(store.get(first.id) for _ in range(5)))
        private_redis.kill()
        private_redis.start()

        with pytest.raises(UnknownRequest):
            await store.get(first.id)
        second = make_record(minute=1)
        await store.create(second, [make_event(second)])
        assert await verify(store.audit_events(), await store.audit_head()) == 1
        assert (await anext(store.audit_events())).prev_hash == GENESIS_HASH
    finally:
        await store.aclose()
