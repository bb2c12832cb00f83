"""The embedded store: requests and the audit chain in one SQLite file, no server.

Several processes may share the file (``lam serve`` next to ``lam ask`` and ``lam
approve``), and many coroutines may share one ``SqliteStore``: every change is one
``BEGIN IMMEDIATE`` transaction that compare-and-sets the record's version and appends its
audit events after the chain head it read inside that same transaction.

Each transaction runs whole on the store's own database thread, in one hop from the
event loop. (aiosqlite hops once per statement; a transition is six statements, and those
hops cost more than the SQLite work itself.) One thread also serialises the coroutines
that share the connection, so no transaction ever interleaves with another.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

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

T = TypeVar("T")

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
        request_id TEXT,
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
    # Claims of ``claim``. A LAM that predates this table never reads it, so adding it
    # leaves the schema version as it was.
    """
    CREATE TABLE IF NOT EXISTS dedupe (
        key TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS dedupe_by_expiry ON dedupe (expires_at)",
    # Values of ``remember``; ``expires_at`` NULL keeps one for good. Like ``dedupe``, a
    # table an older LAM never reads.
    """
    CREATE TABLE IF NOT EXISTS memory (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        expires_at TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS memory_by_expiry ON memory (expires_at)",
)


def _utc_text(moment: datetime) -> str:
    """A timestamp as UTC ISO text with microseconds, so that text order is time order."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


class SqliteStore:
    """The ``Store`` kept in one SQLite file in WAL mode; open it with ``SqliteStore.open``."""

    def __init__(
        self,
        path: Path,
        *,
        audit_page_size: int = 500,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if audit_page_size < 1:
            raise ValueError(f"audit_page_size must be at least 1, not {audit_page_size!r}")
        self.path = path
        self.audit_page_size = audit_page_size
        """How many audit events ``audit_events`` reads at a time."""
        self.clock = clock
        """The store's notion of now, by which claims expire."""
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lam-sqlite")

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        audit_page_size: int = 500,
        clock: Callable[[], datetime] = utcnow,
    ) -> SqliteStore:
        """The store at ``path``, creating the file, its directory and its schema if needed.

        ``clock`` tells the time by which claims expire; processes sharing the file should
        share a clock, which the system clock is.
        """
        store = cls(path, audit_page_size=audit_page_size, clock=clock)
        try:
            store._db = await store._call(partial(_connect, path))
        except BaseException:
            store._thread.shutdown(wait=False)
            raise
        return store

    async def _call(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the database thread; the only way this store touches the file."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the store at {str(self.path)!r} is not open")
        return self._db

    async def create(self, record: RequestRecord, events: Sequence[AuditEvent]) -> RequestRecord:
        """Store a new request (its ``version`` becomes 1) with its first audit events.

        Raises ``IllegalTransition`` when a request with that id exists already.
        """
        stored = record.model_copy(update={"version": 1, "updated_at": utcnow()})
        sealed = await self._call(partial(self._create, stored, events))
        _log(sealed)
        return stored

    def _create(self, stored: RequestRecord, events: Sequence[AuditEvent]) -> list[AuditEvent]:
        with _transaction(self._connection()) as db:
            inserted = db.execute(
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
            ).rowcount
            if inserted == 0:
                raise IllegalTransition(
                    f"a request with id {stored.id!r} exists already; nothing was stored"
                )
            return _append(db, events)

    async def save(
        self, record: RequestRecord, expected_version: int, events: Sequence[AuditEvent]
    ) -> RequestRecord:
        """Replace a request if it is still at ``expected_version``, and append ``events``.

        Returns the record as stored (``version`` bumped). Raises ``ConcurrentUpdate`` when
        another writer got there first, ``UnknownRequest`` when there is no such request.
        """
        stored = record.model_copy(update={"version": expected_version + 1, "updated_at": utcnow()})
        sealed = await self._call(partial(self._save, stored, expected_version, events))
        _log(sealed)
        return stored

    def _save(
        self, stored: RequestRecord, expected_version: int, events: Sequence[AuditEvent]
    ) -> list[AuditEvent]:
        with _transaction(self._connection()) as db:
            updated = db.execute(
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
            ).rowcount
            if updated == 0:
                row = db.execute(
                    "SELECT version FROM requests WHERE id = ?", (stored.id,)
                ).fetchone()
                if row is None:
                    raise UnknownRequest(stored.id)
                raise ConcurrentUpdate(
                    f"request {stored.id!r} is at version {row[0]}, not"
                    f" {expected_version}: another writer changed it; re-read it and decide"
                    " again"
                )
            return _append(db, events)

    async def append(self, events: Sequence[AuditEvent]) -> None:
        """Append audit events that change no request (a policy reload), atomically."""

        def append() -> list[AuditEvent]:
            with _transaction(self._connection()) as db:
                return _append(db, events)

        _log(await self._call(append))

    async def get(self, request_id: str) -> RequestRecord:
        """Raises ``UnknownRequest`` when there is no such request."""
        rows = await self._fetch("SELECT record FROM requests WHERE id = ?", (request_id,))
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
        rows = await self._fetch(query, (*parameters, limit))
        return [RequestRecord.model_validate_json(row[0]) for row in rows]

    async def audit_events(self, after_seq: int = 0) -> AsyncIterator[AuditEvent]:
        """The audit chain in order, starting after ``after_seq``, exactly as stored.

        Reads ``audit_page_size`` events at a time, so a long chain is never all in memory.
        Raises ``AuditChainBroken`` for a stored row that is not an audit event at all.
        """
        cursor = after_seq
        while True:
            rows = await self._fetch(
                "SELECT seq, event FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                (cursor, self.audit_page_size),
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
        rows = await self._fetch("SELECT seq, hash FROM audit_head WHERE id = 1")
        if not rows:
            return 0, GENESIS_HASH
        return int(rows[0][0]), str(rows[0][1])

    async def audit_checkpoint(self) -> tuple[int, str]:
        """Always ``(0, "")``: the embedded store keeps its whole chain."""
        return 0, GENESIS_HASH

    async def claim(self, key: str, request_id: str, ttl: timedelta) -> str:
        """Claim ``key`` for ``request_id`` for ``ttl``; return the request id that owns it.

        One ``BEGIN IMMEDIATE`` transaction: an expired claim of ``key`` is replaced, a live
        one kept (and renewed when ``request_id`` owns it), and expired claims of other keys
        are removed on the way.
        """
        _check_ttl(ttl, "a claim")
        now = self.clock()
        return await self._call(
            partial(self._claim, key, request_id, _utc_text(now), _utc_text(now + ttl))
        )

    def _claim(self, key: str, request_id: str, now: str, expires_at: str) -> str:
        with _transaction(self._connection()) as db:
            db.execute("DELETE FROM dedupe WHERE expires_at <= ?", (now,))
            db.execute(
                "INSERT INTO dedupe (key, request_id, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at"
                " WHERE dedupe.request_id = excluded.request_id",
                (key, request_id, expires_at),
            )
            row = db.execute("SELECT request_id FROM dedupe WHERE key = ?", (key,)).fetchone()
            return str(row[0])

    async def remember(self, key: str, value: str, ttl: timedelta | None = None) -> None:
        """Keep ``value`` under ``key`` for ``ttl`` (by the store's clock) or for good.

        Expired values of other keys are removed on the way.
        """
        if ttl is not None:
            _check_ttl(ttl, "a remembered value")
        now = self.clock()
        expires_at = None if ttl is None else _utc_text(now + ttl)

        def remember() -> None:
            with _transaction(self._connection()) as db:
                db.execute("DELETE FROM memory WHERE expires_at <= ?", (_utc_text(now),))
                db.execute(
                    "INSERT INTO memory (key, value, expires_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET"
                    " value = excluded.value, expires_at = excluded.expires_at",
                    (key, value, expires_at),
                )

        await self._call(remember)

    async def recall(self, key: str) -> str | None:
        """The value kept under ``key``; ``None`` when there is none or it has expired."""
        rows = await self._fetch(
            "SELECT value FROM memory WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (key, _utc_text(self.clock())),
        )
        return str(rows[0][0]) if rows else None

    async def aclose(self) -> None:
        """Close the file once the operation in flight, if any, has finished."""
        if self._db is not None:
            db, self._db = self._db, None
            await self._call(db.close)
        self._thread.shutdown(wait=True)

    async def _fetch(self, query: str, parameters: Sequence[Any] = ()) -> list[Any]:
        def fetch() -> list[Any]:
            return self._connection().execute(query, parameters).fetchall()

        return await self._call(fetch)


def _check_ttl(ttl: timedelta, what: str) -> None:
    if ttl <= timedelta(0):
        raise ValueError(f"{what}'s ttl must be positive, not {ttl!r}")


def _connect(path: Path) -> sqlite3.Connection:
    """Open the file in WAL mode and create or check its schema; on the database thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None stops the sqlite3 module from opening transactions on its own;
    # every transaction here is an explicit BEGIN IMMEDIATE. The connection is used only
    # on the store's one database thread, which is not the thread that opens it.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # The busy timeout comes first, so that even switching to WAL waits for another
        # process that is opening the same file instead of failing.
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(
                f"cannot use write-ahead logging for {str(path)!r}; put LAM_HOME on a local"
                " filesystem"
            )
        # FULL rather than NORMAL: in WAL mode NORMAL is safe from corruption, but a power
        # cut may undo the last commits, and an audit trail that forgets an action which
        # has already run is what this store exists to prevent.
        db.execute("PRAGMA synchronous = FULL")
        with _transaction(db):
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{str(path)!r} was written by a newer LAM (schema {version}); upgrade"
                    " LAM or point LAM_HOME elsewhere"
                )
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, committed when the block ends and rolled back if it raises.

    BEGIN IMMEDIATE takes the file's write lock up front, so writers in other processes
    queue on the busy timeout rather than failing when a read would turn into a write.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _append(db: sqlite3.Connection, events: Sequence[AuditEvent]) -> list[AuditEvent]:
    """Seal ``events`` onto the chain head and move the head; inside a write transaction."""
    row = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    seq, prev_hash = (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)
    sealed: list[AuditEvent] = []
    for event in events:
        seq += 1
        appended = seal(event, seq, prev_hash)
        db.execute(
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
        db.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (seq, prev_hash),
        )
    return sealed


def _log(events: Sequence[AuditEvent]) -> None:
    """Mirror committed events into the structured log; only committed ones, never before."""
    for event in events:
        log_event(event)
