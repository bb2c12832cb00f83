"""The contract every ``Store`` keeps, run against each implementation in ``STORE_FACTORIES``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from bot.audit import seal, verify
from bot.errors import ConcurrentUpdate, IllegalTransition, UnknownRequest
from bot.models import AuditEvent, RequestRecord
from bot.store import Store
from bot.store.sqlite import SqliteStore
from tests.support.records import START, make_event, make_record
from tests.support.redis_server import redis_store
from tests.support.waiting import eventually

StoreFactory = Callable[[Path], AbstractAsyncContextManager[Store]]
"""Opens a store on the backing found at a location; the same location, the same data."""


@asynccontextmanager
async def sqlite_store(location: Path) -> AsyncIterator[Store]:
    store = await SqliteStore.open(location / "lam.db")
    try:
        yield store
    finally:
        await store.aclose()


STORE_FACTORIES: dict[str, StoreFactory] = {"sqlite": sqlite_store, "redis": redis_store}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def open_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], AbstractAsyncContextManager[Store]]:
    """Opens another handle on one fresh backing each time it is called."""
    factory = STORE_FACTORIES[request.param]
    return lambda: factory(tmp_path)


@pytest.fixture
async def store(
    open_store: Callable[[], AbstractAsyncContextManager[Store]],
) -> AsyncIterator[Store]:
    async with open_store() as opened:
        yield opened


async def all_events(store: Store) -> list[AuditEvent]:
    return [event async for event in store.audit_events()]


async def save_with_retry(
    store: Store, request_id: str, marker: str, conflicts: list[str] | None = None
) -> None:
    """Read, add ``marker`` to the record's suggestions, save; start over on a conflict."""
    while True:
        current = await store.get(request_id)
        changed = current.model_copy(update={"suggestions": (*current.suggestions, marker)})
        event = make_event(current, "step.finished", actor=marker)
        try:
            await store.save(changed, current.version, [event])
            return
        except ConcurrentUpdate:
            if conflicts is not None:
                conflicts.append(marker)


class Interrupted(Exception):
    """Stands for anything that goes wrong while a store is halfway through a change."""


class BrokenEvents(list[AuditEvent]):
    """Events that fail after the first one is handed over, midway through an append."""

    def __iter__(self) -> Iterator[AuditEvent]:
        yield self[0]
        raise Interrupted("the second event could not be read")


async def test_create_then_get_returns_the_stored_record(store: Store) -> None:
    """A created request comes back from ``get`` exactly as ``create`` returned it, at version 1."""
    record = make_record()
    created = await store.create(record, [make_event(record)])
    assert created.version == 1
    assert created.request == record.request
    assert await store.get(record.id) == created


async def test_save_bumps_version_and_sets_updated_at(store: Store) -> None:
    """``save`` stores the new state at the next version with a fresh ``updated_at``."""
    record = make_record()
    created = await store.create(record, [make_event(record)])
    planned = created.model_copy(update={"state": "planned"})
    saved = await store.save(planned, created.version, [make_event(planned, "request.planned")])
    assert (saved.version, saved.state) == (2, "planned")
    assert saved.updated_at >= created.updated_at
    assert await store.get(record.id) == saved


async def test_stale_version_raises_concurrent_update_and_writes_nothing(store: Store) -> None:
    """Saving against a version that is no longer current changes neither record nor audit."""
    record = make_record()
    created = await store.create(record, [make_event(record)])
    first = created.model_copy(update={"state": "planned"})
    winner = await store.save(first, created.version, [make_event(first, "request.planned")])
    head = await store.audit_head()

    late = created.model_copy(update={"state": "denied", "reason": "too late"})
    with pytest.raises(ConcurrentUpdate):
        await store.save(late, created.version, [make_event(late, "request.denied")])

    assert await store.get(record.id) == winner
    assert await store.audit_head() == head
    assert [event.kind for event in await all_events(store)] == [
        "request.received",
        "request.planned",
    ]


async def test_unknown_request_raises_unknown_request(store: Store) -> None:
    """``get`` and ``save`` of an id that was never created raise ``UnknownRequest``."""
    ghost = make_record()
    with pytest.raises(UnknownRequest):
        await store.get(ghost.id)
    with pytest.raises(UnknownRequest):
        await store.save(ghost, 1, [make_event(ghost)])
    assert await store.audit_head() == (0, "")


async def test_duplicate_create_raises_illegal_transition_and_writes_nothing(store: Store) -> None:
    """Creating a request whose id exists already keeps the first one and appends no event."""
    record = make_record()
    created = await store.create(record, [make_event(record)])
    impostor = record.model_copy(update={"state": "approved"})
    with pytest.raises(IllegalTransition):
        await store.create(impostor, [make_event(impostor, "request.approved")])
    assert await store.get(record.id) == created
    assert len(await all_events(store)) == 1


async def test_history_filters_orders_newest_first_and_limits(store: Store) -> None:
    """``history`` lists newest requests first, filtered by requester and state, up to a limit."""
    # Created out of order, so only the received time can explain the order that comes back.
    alice_late = make_record("user:alice", minute=2)
    alice_early = make_record("user:alice", minute=0)
    bob = make_record("user:bob", minute=1)
    alice_latest = make_record("user:alice", minute=3)
    for record in (alice_late, alice_early, bob, alice_latest):
        await store.create(record, [make_event(record)])
    created = await store.get(alice_late.id)
    planned = created.model_copy(update={"state": "planned"})
    await store.save(planned, created.version, [make_event(planned, "request.planned")])

    def ids(records: list[RequestRecord]) -> list[str]:
        return [record.id for record in records]

    assert ids(await store.history()) == [alice_latest.id, alice_late.id, bob.id, alice_early.id]
    assert ids(await store.history(requester="user:alice")) == [
        alice_latest.id,
        alice_late.id,
        alice_early.id,
    ]
    assert ids(await store.history(states=frozenset({"planned"}))) == [alice_late.id]
    bob_only = await store.history(requester="user:bob", states=frozenset({"received", "planned"}))
    assert ids(bob_only) == [bob.id]
    assert await store.history(requester="user:carol") == []
    assert await store.history(states=frozenset()) == []
    assert ids(await store.history(limit=2)) == [alice_latest.id, alice_late.id]
    assert (await store.history(states=frozenset({"planned"})))[0].version == 2


async def test_audit_chain_is_contiguous_verified_and_stored_exactly(store: Store) -> None:
    """Appended events are numbered 1, 2, 3… across requests, chained, and read back as sealed."""
    assert await store.audit_head() == (0, "")
    assert await verify(store.audit_events(), await store.audit_head()) == 0

    first, second = make_record(minute=0), make_record("user:bob", minute=1)
    await store.create(first, [make_event(first)])
    await store.create(second, [make_event(second)])
    created = await store.get(first.id)
    planned = created.model_copy(update={"state": "planned"})
    await store.save(
        planned,
        created.version,
        [make_event(planned, "request.planned"), make_event(planned, "request.approved")],
    )

    events = await all_events(store)
    assert [event.seq for event in events] == [1, 2, 3, 4]
    assert events[0] == seal(make_event(first), 1, "")
    assert [event.request_id for event in events] == [first.id, second.id, first.id, first.id]
    assert await store.audit_head() == (4, events[-1].hash)
    assert await verify(store.audit_events(), await store.audit_head()) == 4
    assert [event.seq async for event in store.audit_events(after_seq=2)] == [3, 4]


async def test_events_of_lam_itself_join_the_same_chain(store: Store) -> None:
    """Events about no request (a policy reload) are chained between request events."""
    record = make_record()
    await store.create(record, [make_event(record)])
    reload = AuditEvent(
        kind="policy.reloaded",
        request_id=None,
        actor="lam",
        state=None,
        reason="sha256:ab",
        at=START,
    )
    await store.append([reload])
    events = await all_events(store)
    assert [(e.seq, e.kind, e.request_id) for e in events] == [
        (1, "request.received", record.id),
        (2, "policy.reloaded", None),
    ]
    assert await verify(store.audit_events(), await store.audit_head()) == 2


async def test_concurrent_read_modify_save_loses_no_update(store: Store) -> None:
    """Fifty coroutines retrying read-modify-save on one request each land exactly once."""
    record = make_record()
    await store.create(record, [make_event(record)])
    markers = [f"worker-{n}" for n in range(50)]
    conflicts: list[str] = []

    await asyncio.gather(*(save_with_retry(store, record.id, m, conflicts) for m in markers))

    final = await store.get(record.id)
    assert conflicts, "the workers never collided, so the compare-and-set went untested"
    assert final.version == 1 + len(markers)
    assert sorted(final.suggestions) == sorted(markers)
    events = await all_events(store)
    assert sorted(event.actor for event in events[1:]) == sorted(markers)
    assert await verify(store.audit_events(), await store.audit_head()) == 1 + len(markers)


async def test_two_handles_on_one_backing_serialize_their_writes(
    open_store: Callable[[], AbstractAsyncContextManager[Store]],
) -> None:
    """Writers on two separate handles to the same data never lose an update or fork the chain."""
    async with open_store() as one, open_store() as other:
        record = make_record()
        await one.create(record, [make_event(record)])
        markers = [f"{name}-{n}" for name in ("one", "other") for n in range(25)]
        handles = [one, other] * 25

        await asyncio.gather(
            *(
                save_with_retry(handle, record.id, marker)
                for handle, marker in zip(handles, markers, strict=True)
            )
        )

        final = await other.get(record.id)
        assert final.version == 1 + len(markers)
        assert sorted(final.suggestions) == sorted(markers)
        assert await verify(one.audit_events(), await one.audit_head()) == 1 + len(markers)


async def test_events_of_a_failed_save_never_appear(store: Store) -> None:
    """A save that fails midway through appending leaves the record and the chain as they were."""
    record = make_record()
    created = await store.create(record, [make_event(record)])
    head = await store.audit_head()
    planned = created.model_copy(update={"state": "planned"})

    with pytest.raises(Interrupted):
        await store.save(
            planned,
            created.version,
            BrokenEvents([make_event(planned, "request.planned"), make_event(planned)]),
        )

    assert await store.get(record.id) == created
    assert await store.audit_head() == head
    assert len(await all_events(store)) == 1
    # The store is still usable: the next save lands right after the surviving event.
    await store.save(planned, created.version, [make_event(planned, "request.planned")])
    assert [event.seq for event in await all_events(store)] == [1, 2]
    assert await verify(store.audit_events(), await store.audit_head()) == 2


async def test_events_of_a_failed_create_never_appear(store: Store) -> None:
    """A create that fails midway through appending stores neither the request nor any event."""
    record = make_record()
    with pytest.raises(Interrupted):
        await store.create(record, BrokenEvents([make_event(record), make_event(record)]))
    with pytest.raises(UnknownRequest):
        await store.get(record.id)
    assert await store.audit_head() == (0, "")
    assert await all_events(store) == []


CLAIM_TTL = timedelta(hours=1)


async def test_the_first_claim_of_a_key_wins(store: Store) -> None:
    """A free key goes to the first claimant; later claims get its id, the owner gets its own."""
    assert await store.claim("slack:Ev1", "first", CLAIM_TTL) == "first"
    assert await store.claim("slack:Ev1", "second", CLAIM_TTL) == "first"
    assert await store.claim("slack:Ev1", "first", CLAIM_TTL) == "first"
    assert await store.claim("slack:Ev2", "second", CLAIM_TTL) == "second"
    # Claims are not audit events: the chain is untouched.
    assert await store.audit_head() == (0, "")


async def test_a_claim_needs_a_positive_ttl(store: Store) -> None:
    """A ttl of zero is refused rather than taken as a claim that never was."""
    with pytest.raises(ValueError, match="ttl"):
        await store.claim("slack:Ev1", "first", timedelta(0))


async def test_concurrent_claims_of_one_key_have_exactly_one_winner(
    open_store: Callable[[], AbstractAsyncContextManager[Store]],
) -> None:
    """Twenty coroutines on two handles claim one key: one wins, and all name the same owner."""
    async with open_store() as one, open_store() as other:
        claimants = [f"request-{n}" for n in range(20)]
        owners = await asyncio.gather(
            *(
                (one if n % 2 else other).claim("slack:Ev1", claimant, CLAIM_TTL)
                for n, claimant in enumerate(claimants)
            )
        )
        assert len(set(owners)) == 1
        assert owners[0] in claimants
        assert owners.count(owners[0]) == len(claimants)


async def test_an_expired_claim_frees_its_key(store: Store) -> None:
    """Once a claim's ttl has passed by the store's clock, a new claimant gets the key."""
    assert await store.claim("slack:Ev1", "first", timedelta(milliseconds=20)) == "first"
    owners = [await store.claim("slack:Ev1", "second", CLAIM_TTL)]
    deadline = asyncio.get_running_loop().time() + 10
    while owners[-1] != "second":
        assert asyncio.get_running_loop().time() < deadline, "the claim never expired"
        # Poll the store itself, which alone decides when the claim has expired.
        await asyncio.sleep(0.005)
        owners.append(await store.claim("slack:Ev1", "second", CLAIM_TTL))
    assert set(owners[:-1]) <= {"first"}
    # The new claim holds like any other.
    assert await store.claim("slack:Ev1", "third", CLAIM_TTL) == "second"


async def test_the_owners_claim_renews_it(store: Store) -> None:
    """An owner that claims again keeps its key past the first ttl: a claim renewed is a lease."""
    short = timedelta(milliseconds=300)
    assert await store.claim("lease", "leader", short) == "leader"
    assert await store.claim("lease", "leader", CLAIM_TTL) == "leader"
    # Long after the first ttl the renewed claim still holds.
    await wait_for_expiry(store, "probe", short)
    assert await store.claim("lease", "follower", CLAIM_TTL) == "leader"


async def test_a_tiny_ttl_gives_a_claim_up(store: Store) -> None:
    """The owner gives up its claim by renewing it for a moment; then another takes the key."""
    assert await store.claim("lease", "leader", CLAIM_TTL) == "leader"
    assert await store.claim("lease", "leader", timedelta(milliseconds=1)) == "leader"
    await wait_for_owner(store, "lease", "follower")


async def wait_for_owner(store: Store, key: str, claimant: str) -> None:
    """Claim ``key`` for ``claimant`` until it is theirs; polls the store, whose clock decides."""

    async def owned() -> bool:
        return await store.claim(key, claimant, CLAIM_TTL) == claimant

    await eventually(owned, f"{key!r} to become free")


async def wait_for_expiry(store: Store, key: str, ttl: timedelta) -> None:
    """Return once a claim of ``key`` made now for ``ttl`` has expired by the store's clock."""
    assert await store.claim(key, "first", ttl) == "first"
    await wait_for_owner(store, key, "second")


async def test_remembered_values_are_recalled_and_replaced(
    open_store: Callable[[], AbstractAsyncContextManager[Store]],
) -> None:
    """A value remembered through one handle is recalled through another; the last write wins."""
    async with open_store() as one, open_store() as other:
        assert await other.recall("slack:plan:r1") is None
        await one.remember("slack:plan:r1", '{"channel": "C0OPS"}')
        assert await other.recall("slack:plan:r1") == '{"channel": "C0OPS"}'
        await other.remember("slack:plan:r1", "replaced", CLAIM_TTL)
        assert await one.recall("slack:plan:r1") == "replaced"
        assert await one.recall("slack:plan:r2") is None
        # Remembered values are not claims, and not audit events.
        assert await one.claim("slack:plan:r1", "claimant", CLAIM_TTL) == "claimant"
        assert await one.audit_head() == (0, "")


async def test_a_remembered_value_expires_with_its_ttl(store: Store) -> None:
    """A value kept for a ttl is gone once the ttl has passed; one kept for good stays."""
    short = timedelta(milliseconds=50)
    await store.remember("brief", "soon gone", short)
    await store.remember("lasting", "kept")
    assert await store.recall("brief") == "soon gone"

    async def expired() -> bool:
        return await store.recall("brief") is None

    await eventually(expired, "the remembered value to expire")
    assert await store.recall("lasting") == "kept"
    # Remembering again starts afresh.
    await store.remember("brief", "back", CLAIM_TTL)
    assert await store.recall("brief") == "back"


async def test_remember_needs_a_positive_ttl(store: Store) -> None:
    """A ttl of zero is refused and nothing is kept."""
    with pytest.raises(ValueError, match="ttl"):
        await store.remember("key", "value", timedelta(0))
    assert await store.recall("key") is None
