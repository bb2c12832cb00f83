"""The audit chain: sealing, verification, redaction, and tampering with a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from pydantic import JsonValue

from bot.audit import MASK, Redactor, chain_hash, seal, verify
from bot.errors import AuditChainBroken
from bot.models import AuditEvent, EventKind, Request, RequestRecord, StepResult
from bot.store.sqlite import SqliteStore

AT = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
KINDS: tuple[EventKind, ...] = (
    "request.received",
    "request.planned",
    "request.awaiting_approval",
    "approval.granted",
    "request.approved",
)


def unsealed(n: int, *, request_id: str = "req1", actor: str = "user:alice") -> AuditEvent:
    return AuditEvent(
        kind=KINDS[n % len(KINDS)], request_id=request_id, actor=actor, state="planned", at=AT
    )


def sealed_chain(length: int) -> list[AuditEvent]:
    chain: list[AuditEvent] = []
    for n in range(length):
        chain.append(seal(unsealed(n), n + 1, chain[-1].hash if chain else ""))
    return chain


def head_of(chain: list[AuditEvent]) -> tuple[int, str]:
    return (chain[-1].seq, chain[-1].hash) if chain else (0, "")


async def stream(events: Iterable[AuditEvent]) -> AsyncIterator[AuditEvent]:
    for event in events:
        yield event


async def broken_at(events: Iterable[AuditEvent], head: tuple[int, str]) -> AuditChainBroken:
    with pytest.raises(AuditChainBroken) as caught:
        await verify(stream(events), head)
    return caught.value


# --- sealing and verifying -------------------------------------------------------------


def test_seal_numbers_links_and_hashes_the_event() -> None:
    """``seal`` sets seq and prev_hash and a hash over everything but the hash fields."""
    event = seal(unsealed(0), 7, "abc")
    assert (event.seq, event.prev_hash) == (7, "abc")
    assert event.hash == chain_hash("abc", event)
    assert event.hash != seal(unsealed(0), 8, "abc").hash


async def test_verify_accepts_an_intact_chain_and_counts_it() -> None:
    """An untouched chain whose head matches verifies and reports its length."""
    chain = sealed_chain(5)
    assert await verify(stream(chain), head_of(chain)) == 5
    assert await verify(stream([]), (0, "")) == 0


async def test_verify_names_an_edited_event() -> None:
    """Changing any field of an event breaks its own hash."""
    chain = sealed_chain(5)
    chain[2] = chain[2].model_copy(update={"actor": "user:mallory"})
    error = await broken_at(chain, head_of(sealed_chain(5)))
    assert error.seq == 3
    assert "edited" in error.problem


async def test_verify_names_the_event_after_an_edited_and_rehashed_one() -> None:
    """Re-hashing an edited event still breaks the link from the event after it."""
    chain = sealed_chain(5)
    forged = chain[2].model_copy(update={"actor": "user:mallory"})
    chain[2] = seal(forged, forged.seq, forged.prev_hash)
    error = await broken_at(chain, head_of(sealed_chain(5)))
    assert error.seq == 4
    assert "does not link" in error.problem


async def test_verify_names_the_event_after_a_removed_one() -> None:
    """Removing an event from the middle leaves a gap in the numbering."""
    chain = sealed_chain(5)
    del chain[2]
    error = await broken_at(chain, head_of(sealed_chain(5)))
    assert error.seq == 4
    assert "expected event 3" in error.problem


async def test_verify_names_the_event_displaced_by_an_inserted_one() -> None:
    """An event inserted with a valid seal still pushes the original one out of place."""
    chain = sealed_chain(5)
    intruder = seal(unsealed(0, actor="user:mallory"), 3, chain[1].hash)
    chain.insert(2, intruder)
    error = await broken_at(chain, head_of(sealed_chain(5)))
    assert error.seq == 3
    assert "expected event 4" in error.problem


async def test_verify_names_reordered_events() -> None:
    """Swapping two events is caught at the first one out of place."""
    chain = sealed_chain(5)
    chain[1], chain[2] = chain[2], chain[1]
    error = await broken_at(chain, head_of(sealed_chain(5)))
    assert error.seq == 3
    assert "expected event 2" in error.problem


async def test_verify_catches_a_truncated_tail_with_the_head() -> None:
    """Dropping the last events is caught because the kept head points past the end."""
    chain = sealed_chain(5)
    error = await broken_at(chain[:3], head_of(chain))
    assert error.seq == 4
    assert "ends at event 3" in error.problem


async def test_verify_catches_a_rewritten_tail_with_the_head() -> None:
    """A chain re-sealed without its last event still disagrees with the head."""
    chain = sealed_chain(5)
    error = await broken_at(chain[:4], (5, "f" * 64))
    assert error.seq == 5


async def test_verify_catches_events_appended_past_the_head() -> None:
    """Events added after the recorded head do not verify."""
    chain = sealed_chain(5)
    error = await broken_at(chain, head_of(chain[:4]))
    assert error.seq == 5
    assert "events were added after it" in error.problem


async def test_verify_accepts_events_appended_while_it_reads() -> None:
    """Events written after the first head was read verify against the head read after."""
    chain = sealed_chain(5)

    async def head_after() -> tuple[int, str]:
        return head_of(chain)

    assert await verify(stream(chain), head_of(chain[:3]), head_after=head_after) == 5


async def test_verify_refuses_events_past_the_later_head_too() -> None:
    """Events past the head read at the end were not written through the store."""
    chain = sealed_chain(5)

    async def head_after() -> tuple[int, str]:
        return head_of(chain[:4])

    with pytest.raises(AuditChainBroken) as caught:
        await verify(stream(chain), head_of(chain[:3]), head_after=head_after)
    assert caught.value.seq == 5


# --- redaction -------------------------------------------------------------------------


def test_redactor_masks_values_under_secret_looking_keys_at_any_depth() -> None:
    """Values under keys such as password, api_key or Authorization are masked wherever they sit."""
    redactor = Redactor()
    value: JsonValue = {
        "password": "hunter22",
        "service": "api",
        "nested": {"API-Key": "k-123", "items": [{"Authorization": "Bearer z"}, {"n": 1}]},
        "session_id": "",
    }
    assert redactor.json(value) == {
        "password": MASK,
        "service": "api",
        "nested": {"API-Key": MASK, "items": [{"Authorization": MASK}, {"n": 1}]},
        "session_id": "",
    }


def test_redactor_masks_configured_secret_values_anywhere() -> None:
    """A configured secret is masked inside any string, longest secret first, short ones ignored."""
    redactor = Redactor(["s3cr3t-token", "s3cr3t", "ab"])
    redactor.add(["pg-pass-99"])
    assert redactor.text("use s3cr3t-token then s3cr3t, ab") == f"use {MASK} then {MASK}, ab"
    assert redactor.json({"out": ["dsn=pg://u:pg-pass-99@db", 3]}) == {
        "out": [f"dsn=pg://u:{MASK}@db", 3]
    }


def test_redactor_masks_models_and_keeps_clean_ones_as_they_are() -> None:
    """A model carrying a secret comes back as a masked copy; one without comes back unchanged."""
    redactor = Redactor(["s3cr3t-token"])
    step = StepResult(step_id="s1", action="shell.run", status="failed", output="s3cr3t-token!")
    event = unsealed(0).model_copy(update={"step": step, "reason": "token s3cr3t-token leaked"})
    masked = redactor.model(event)
    assert masked.step is not None
    assert (masked.step.output, masked.reason) == (f"{MASK}!", f"token {MASK} leaked")
    assert event.step is not None and event.step.output == "s3cr3t-token!"
    clean = unsealed(1)
    assert redactor.model(clean) is clean


def test_redactor_is_a_structlog_processor() -> None:
    """In a structlog chain the redactor masks secret keys and configured values in every line."""
    logger = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[Redactor(["s3cr3t-token"]), structlog.processors.JSONRenderer(sort_keys=True)],
    )
    line = json.loads(
        logger.info(
            "login with s3cr3t-token", password="hunter22", cookie=b"c=1", user="alice", n=3
        )
    )
    assert line == {
        "event": f"login with {MASK}",
        "password": MASK,
        "cookie": MASK,
        "user": "alice",
        "n": 3,
    }


# --- tampering with a real SQLite file -------------------------------------------------


@pytest.fixture
async def audited(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A store whose file holds one request and a chain of five events."""
    store = await SqliteStore.open(tmp_path / "lam" / "lam.db")
    record = RequestRecord(request=Request(id="req1", text="restart api", requester="user:alice"))
    current = await store.create(record, [unsealed(0)])
    for n in range(1, 5):
        current = await store.save(current, current.version, [unsealed(n)])
    try:
        yield store
    finally:
        await store.aclose()


def tamper(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Change the file behind the store's back, the way someone with write access could."""
    with closing(sqlite3.connect(path)) as db, db:
        for sql, parameters in statements:
            db.execute(sql, parameters)


def stored_event(path: Path, seq: int) -> dict[str, object]:
    with closing(sqlite3.connect(path)) as db:
        (text,) = db.execute("SELECT event FROM audit WHERE seq = ?", (seq,)).fetchone()
    loaded: dict[str, object] = json.loads(text)
    return loaded


async def store_broken_at(store: SqliteStore) -> AuditChainBroken:
    with pytest.raises(AuditChainBroken) as caught:
        await verify(store.audit_events(), await store.audit_head())
    return caught.value


async def test_open_creates_the_directory_and_a_wal_file(audited: SqliteStore) -> None:
    """Opening a store creates missing directories and puts the file in WAL mode."""
    with closing(sqlite3.connect(audited.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert await verify(audited.audit_events(), await audited.audit_head()) == 5


async def test_audit_events_streams_a_chain_longer_than_a_page(tmp_path: Path) -> None:
    """Events are read a page at a time and still come out complete and in order."""
    store = await SqliteStore.open(tmp_path / "lam.db", audit_page_size=3)
    try:
        record = RequestRecord(request=Request(text="restart api", requester="user:alice"))
        await store.create(record, [unsealed(n, request_id=record.id) for n in range(9)])
        assert [event.seq async for event in store.audit_events()] == list(range(1, 10))
        assert [event.seq async for event in store.audit_events(after_seq=4)] == [5, 6, 7, 8, 9]
        assert await verify(store.audit_events(), await store.audit_head()) == 9
    finally:
        await store.aclose()


async def test_sqlite_edited_event_json_is_caught(audited: SqliteStore) -> None:
    """Editing an event's stored JSON breaks that event's hash."""
    event = stored_event(audited.path, 3)
    event["actor"] = "user:mallory"
    tamper(audited.path, ("UPDATE audit SET event = ? WHERE seq = 3", (json.dumps(event),)))
    error = await store_broken_at(audited)
    assert error.seq == 3
    assert "edited" in error.problem


async def test_sqlite_unreadable_event_json_is_caught(audited: SqliteStore) -> None:
    """A stored row that is no longer an audit event at all breaks the chain at that row."""
    tamper(audited.path, ('UPDATE audit SET event = \'{"kind": "nope"}\' WHERE seq = 2', ()))
    error = await store_broken_at(audited)
    assert error.seq == 2


async def test_sqlite_deleted_row_is_caught(audited: SqliteStore) -> None:
    """Deleting an event row from the middle is caught at the event after the gap."""
    tamper(audited.path, ("DELETE FROM audit WHERE seq = 3", ()))
    error = await store_broken_at(audited)
    assert error.seq == 4
    assert "expected event 3" in error.problem


async def test_sqlite_swapped_rows_are_caught(audited: SqliteStore) -> None:
    """Swapping two rows' seq reorders the chain, which is caught at the first moved event."""
    tamper(
        audited.path,
        ("UPDATE audit SET seq = -1 WHERE seq = 2", ()),
        ("UPDATE audit SET seq = 2 WHERE seq = 3", ()),
        ("UPDATE audit SET seq = 3 WHERE seq = -1", ()),
    )
    error = await store_broken_at(audited)
    assert error.seq == 3
    assert "expected event 2" in error.problem


async def test_sqlite_deleted_last_row_is_caught_by_the_head(audited: SqliteStore) -> None:
    """Deleting the newest event is caught because the separately kept head still names it."""
    tamper(audited.path, ("DELETE FROM audit WHERE seq = 5", ()))
    error = await store_broken_at(audited)
    assert error.seq == 5
    assert "ends at event 4" in error.problem


async def test_sqlite_failure_midway_rolls_back_record_and_events(audited: SqliteStore) -> None:
    """When the database refuses a save's second event, its record and first event roll back."""
    tamper(
        audited.path,
        (
            "CREATE TRIGGER refuse BEFORE INSERT ON audit WHEN NEW.kind = 'request.failed'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END",
            (),
        ),
    )
    before = await audited.get("req1")
    head = await audited.audit_head()
    failing = [unsealed(0), unsealed(0).model_copy(update={"kind": "request.failed"})]
    with pytest.raises(sqlite3.DatabaseError, match="refused"):
        await audited.save(before.model_copy(update={"state": "failed"}), before.version, failing)

    assert await audited.get("req1") == before
    assert await audited.audit_head() == head
    assert await verify(audited.audit_events(), head) == 5


CHILD = """
import asyncio, sys
from pathlib import Path
from bot.errors import ConcurrentUpdate
from bot.models import AuditEvent
from bot.store.sqlite import SqliteStore

async def main(path, request_id, worker, count):
    store = await SqliteStore.open(Path(path))
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        for n in range(count):
            marker = f"{worker}-{n}"
            while True:
                current = await store.get(request_id)
                changed = current.model_copy(
                    update={"suggestions": (*current.suggestions, marker)}
                )
                event = AuditEvent(
                    kind="step.finished", request_id=request_id, actor=marker,
                    state=current.state,
                )
                try:
                    await store.save(changed, current.version, [event])
                    break
                except ConcurrentUpdate:
                    pass
    finally:
        await store.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_two_processes_appending_to_one_file_keep_one_chain(tmp_path: Path) -> None:
    """Two processes saving the same request concurrently lose no update and fork no chain."""
    path = tmp_path / "lam.db"
    store = await SqliteStore.open(path)
    try:
        record = RequestRecord(request=Request(id="shared", text="deploy", requester="user:a"))
        await store.create(record, [unsealed(0, request_id="shared")])
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                str(path),
                "shared",
                worker,
                "50",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for worker in ("one", "two")
        ]
        # Both children have the file open before either writes, so their saves overlap.
        for child in children:
            assert child.stdout is not None
            ready = await asyncio.wait_for(child.stdout.readline(), timeout=60)
            assert ready == b"ready\n"
        outputs = await asyncio.wait_for(
            asyncio.gather(*(child.communicate(b"go\n") for child in children)), timeout=120
        )
        for child, (_, stderr) in zip(children, outputs, strict=True):
            assert child.returncode == 0, stderr.decode()

        final = await store.get("shared")
        expected = {f"{worker}-{n}" for worker in ("one", "two") for n in range(50)}
        assert final.version == 101
        assert sorted(final.suggestions) == sorted(expected)
        assert await verify(store.audit_events(), await store.audit_head()) == 101
    finally:
        await store.aclose()
