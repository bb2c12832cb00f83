"""The embedded store: requests and the audit chain in one SQLite file, no server.

Several processes may share the file (``lam serve`` next to ``lam ask`` and ``lam
approve``), and many coroutines may share one ``SqliteStore``: every change is one
``BEGIN IMMEDIATE`` transaction that compare-and-sets the record's version and appends its
audit events after the chain head it read inside that same transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
from pydantic import ValidationError

from bot.audit import GENESIS_HASH, log_event, seal
from bot.errors import (
    AuditChainBroken,
    ConcurrentUpdate,
    ConfigError,
    IllegalTransition,
    UnknownRequest,
)
from bot.models import AuditEvent, RequestRecord, State, canonical_json, utcnow

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS requests (
        id TEXT PRIMARY KEY,
        requester TEXT NOT NULL,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        record TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS requests_by_requester ON requests (requester, created_at)",
    "CREATE INDEX IF NOT EXISTS requests_by_recency ON requests (created_at)",
    """
    CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        at TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        event TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS audit_by_request ON audit (request_id, seq)",
    """
    CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL
    )
    """,
    "INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, '')",
)


def _utc_text(moment: datetime) -> str:
    """A timestamp as UTC ISO text with microseconds, so that text order is time order."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


class SqliteStore:
    """The ``Store`` kept in one SQLite file in WAL mode; open it with ``SqliteStore.open``."""

    def __init__(self, path: Path, *, audit_page_size: int = 500) -> None:
        if audit_page_size < 1:
            raise ValueError(f"audit_page_size must be at least 1, not {audit_page_size!r}")
        self.path = path
        self.audit_page_size = audit_page_size
        """How many audit events ``audit_events`` reads at a time."""
        self._db: aiosqlite.Connection | None = None
        # aiosqlite runs every call on the connection's one thread, but a transaction is
        # several calls: without this lock two coroutines' statements would interleave
        # inside one transaction, and a read could see another coroutine's uncommitted
        # writes.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, audit_page_size: int = 500) -> SqliteStore:
        """The store at ``path``, creating the file, its directory and its schema if needed."""
        store = cls(path, audit_page_size=audit_page_size)
        await store._connect()
        return store

    async def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None stops the sqlite3 module from opening transactions on its
        # own; every transaction here is an explicit BEGIN IMMEDIATE.
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            # The busy timeout comes first, so that even switching to WAL waits for
            # another process that is opening the same file instead of failing.
            await _execute(db, f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            rows = list(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
            if str(rows[0][0]).lower() != "wal":
                raise ConfigError(
                    f"cannot use write-ahead logging for {str(self.path)!r}; put LAM_HOME on"
                    " a local filesystem"
                )
            # FULL rather than NORMAL: in WAL mode NORMAL is safe from corruption, but a
            # power cut may undo the last commits, and an audit trail that forgets an
            # action which has already run is what this store exists to prevent. Commits
            # are human-paced, so one fsync each costs nothing that matters.
            await _execute(db, "PRAGMA synchronous = FULL")
            await _execute(db, "BEGIN IMMEDIATE")
            try:
                rows = list(await db.execute_fetchall("PRAGMA user_version"))
                if int(rows[0][0]) > SCHEMA_VERSION:
                    raise ConfigError(
                        f"{str(self.path)!r} was written by a newer LAM (schema"
                        f" {rows[0][0]}); upgrade LAM or point LAM_HOME elsewhere"
                    )
                for statement in _SCHEMA:
                    await _execute(db, statement)
                await _execute(db, f"PRAGMA user_version = {SCHEMA_VERSION}")
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
        except BaseException:
            await db.close()
            raise
        self._db = db

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"the store at {str(self.path)!r} is not open")
        return self._db

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, committed when the block ends and rolled back if it raises.

        BEGIN IMMEDIATE takes the file's write lock up front, so writers in other processes
        queue on the busy timeout rather than failing when a read would turn into a write.
        """
        async with self._lock:
            db = self._connection()
            await _execute(db, "BEGIN IMMEDIATE")
            try:
                yield db
                await db.commit()
            except BaseException:
                # Also on cancellation: aiosqlite queues the rollback before any later
                # statement, so the connection is never left inside a transaction.
                await db.rollback()
                raise

    async def create(self, record: RequestRecord, events: Sequence[AuditEvent]) -> RequestRecord:
        """Store a new request (its ``version`` becomes 1) with its first audit events.

        Raises ``IllegalTransition`` when a request with that id exists already.
        """
        stored = record.model_copy(update={"version": 1, "updated_at": utcnow()})
        async with self._transaction() as db:
            inserted = await _execute(
                db,
                "INSERT INTO requests"
                " (id, requester, state, version, created_at, updated_at, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (
                    stored.id,
                    stored.request.requester,
                    stored.state,
                    stored.version,
                    _utc_text(stored.request.received_at),
                    _utc_text(stored.updated_at),
                    canonical_json(stored),
                ),
            )
            if inserted == 0:
                raise IllegalTransition(
                    f"a request with id {stored.id!r} exists already; nothing was stored"
                )
            sealed = await _append(db, events)
        _log(sealed)
        return stored

    async def save(
        self, record: RequestRecord, expected_version: int, events: Sequence[AuditEvent]
    ) -> RequestRecord:
        """Replace a request if it is still at ``expected_version``, and append ``events``.

        Returns the record as stored (``version`` bumped). Raises ``ConcurrentUpdate`` when
        another writer got there first, ``UnknownRequest`` when there is no such request.
        """
        stored = record.model_copy(update={"version": expected_version + 1, "updated_at": utcnow()})
        async with self._transaction() as db:
            updated = await _execute(
                db,
                "UPDATE requests SET state = ?, version = ?, updated_at = ?, record = ?"
                " WHERE id = ? AND version = ?",
                (
                    stored.state,
                    stored.version,
                    _utc_text(stored.updated_at),
                    canonical_json(stored),
                    stored.id,
                    expected_version,
                ),
            )
            if updated == 0:
                rows = list(
                    await db.execute_fetchall(
                        "SELECT version FROM requests WHERE id = ?", (stored.id,)
                    )
                )
                if not rows:
                    raise UnknownRequest(stored.id)
                raise ConcurrentUpdate(
                    f"request {stored.id!r} is at version {rows[0][0]}, not"
                    f" {expected_version}: another writer changed it; re-read it and decide"
                    " again"
                )
            sealed = await _append(db, events)
        _log(sealed)
        return stored

    async def get(self, request_id: str) -> RequestRecord:
        """Raises ``UnknownRequest`` when there is no such request."""
        async with self._lock:
            rows = list(
                await self._connection().execute_fetchall(
                    "SELECT record FROM requests WHERE id = ?", (request_id,)
                )
            )
        if not rows:
            raise UnknownRequest(request_id)
        return RequestRecord.model_validate_json(rows[0][0])

    async def history(
        self,
        *,
        requester: str | None = None,
        states: frozenset[State] | None = None,
        limit: int = 20,
    ) -> list[RequestRecord]:
        """Most recent requests first, optionally only one requester's or in some states."""
        if limit <= 0 or (states is not None and not states):
            return []
        conditions: list[str] = []
        parameters: list[Any] = []
        if requester is not None:
            conditions.append("requester = ?")
            parameters.append(requester)
        if states is not None:
            conditions.append(f"state IN ({', '.join('?' * len(states))})")
            parameters.extend(sorted(states))
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        # Requests received in the same microsecond come out newest-stored first.
        # Only placeholders are interpolated into the query; every value is a parameter.
        query = (
            f"SELECT record FROM requests{where}"  # noqa: S608
            " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        )
        async with self._lock:
            rows = await self._connection().execute_fetchall(query, (*parameters, limit))
        return [RequestRecord.model_validate_json(row[0]) for row in rows]

    async def audit_events(self, after_seq: int = 0) -> AsyncIterator[AuditEvent]:
        """The audit chain in order, starting after ``after_seq``, exactly as stored.

        Reads ``audit_page_size`` events at a time, so a long chain is never all in memory.
        Raises ``AuditChainBroken`` for a stored row that is not an audit event at all.
        """
        cursor = after_seq
        while True:
            # The lock is held per page only: a consumer that saves while it iterates
            # must not wait on itself.
            async with self._lock:
                rows = list(
                    await self._connection().execute_fetchall(
                        "SELECT seq, event FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                        (cursor, self.audit_page_size),
                    )
                )
            for seq, text in rows:
                try:
                    event = AuditEvent.model_validate_json(text)
                except ValidationError as error:
                    raise AuditChainBroken(
                        seq, "the stored row is not a valid audit event (edited)"
                    ) from error
                yield event
            if len(rows) < self.audit_page_size:
                return
            cursor = rows[-1][0]

    async def audit_head(self) -> tuple[int, str]:
        """The ``(seq, hash)`` of the last appended event; ``(0, "")`` when there is none.

        Kept apart from the events, so removing events from the end is detected too.
        """
        async with self._lock:
            rows = list(
                await self._connection().execute_fetchall(
                    "SELECT seq, hash FROM audit_head WHERE id = 1"
                )
            )
        if not rows:
            return 0, GENESIS_HASH
        return int(rows[0][0]), str(rows[0][1])

    async def aclose(self) -> None:
        """Close the file once the operation in flight, if any, has finished."""
        async with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                await db.close()


async def _execute(db: aiosqlite.Connection, sql: str, parameters: Sequence[Any] = ()) -> int:
    """Run one statement and return how many rows it changed."""
    async with db.execute(sql, parameters) as cursor:
        return cursor.rowcount


async def _append(db: aiosqlite.Connection, events: Sequence[AuditEvent]) -> list[AuditEvent]:
    """Seal ``events`` onto the chain head and move the head; inside a write transaction."""
    rows = list(await db.execute_fetchall("SELECT seq, hash FROM audit_head WHERE id = 1"))
    seq, prev_hash = (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)
    sealed: list[AuditEvent] = []
    for event in events:
        seq += 1
        appended = seal(event, seq, prev_hash)
        await _execute(
            db,
            "INSERT INTO audit (seq, request_id, kind, at, prev_hash, hash, event)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                appended.seq,
                appended.request_id,
                appended.kind,
                _utc_text(appended.at),
                appended.prev_hash,
                appended.hash,
                canonical_json(appended),
            ),
        )
        sealed.append(appended)
        prev_hash = appended.hash
    if sealed:
        await _execute(
            db,
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (seq, prev_hash),
        )
    return sealed


def _log(events: Sequence[AuditEvent]) -> None:
    """Mirror committed events into the structured log; only committed ones, never before."""
    for event in events:
        log_event(event)
