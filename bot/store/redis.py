"""The team store: requests, their history indexes and the audit chain in one Redis.

Many replicas may share one Redis, and several installations may share it too: every key
starts with the installation's ``prefix`` (``lam:`` by default).

Key layout, after the prefix:

- ``request:{id}``: a hash with ``record`` (canonical JSON), ``version``, ``state``,
  ``requester``, ``received_at`` (UTC ISO text), ``member`` (its name in the indexes) and
  ``indexes`` (a JSON list of the index keys it is in, so a change can move it).
- ``index:all``, ``index:requester:{requester}``, ``index:state:{state}``,
  ``index:state:{state}:requester:{requester}``, ``index:action:{action}`` and
  ``index:environment:{environment}``: sorted sets scored by the received time in
  microseconds. A member is ``{n:016d}:{id}``, ``n`` being the audit seq the request's
  first event took, so requests received in the same microsecond come out newest-stored
  first, as in ``SqliteStore``.
- ``audit``: a stream with one entry per event. The entry id is ``{seq}-0``, so the seq
  addresses the entry directly; its fields are ``seq``, ``hash``, ``event`` (canonical
  JSON of the sealed event) and ``txn`` (a token naming the transaction that wrote it).
- ``audit:head`` and ``audit:checkpoint``: hashes ``{seq, hash}`` of the last appended
  event and of the last event ``trim`` removed.
- ``schema``: the layout version.
- ``dedupe:{key}``: the id of the request that claimed ``key`` (``claim``), expiring with
  the claim.
- ``memory:{key}``: a value kept by ``remember``, expiring with its ttl if it has one.

Every change is one ``WATCH`` … ``MULTI``/``EXEC`` transaction. Redis scripts cannot take
a sha256, so events are sealed here, under ``WATCH`` of the chain head: when another
writer moves the head first, ``EXEC`` fails and the transaction starts over.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import random
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import overload
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.audit import GENESIS_HASH, MASK, SECRET_KEY, chain_hash, log_event, seal
from bot.errors import (
    AuditChainBroken,
    ConcurrentUpdate,
    ConfigError,
    IllegalTransition,
    StoreUnavailable,
    UnknownRequest,
)
from bot.models import AuditEvent, RequestRecord, State, canonical_json, utcnow

SCHEMA_VERSION = 1
MAX_ATTEMPTS = 50
"""How often a change starts over because another writer moved the chain head first."""
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
CLAIM_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if not owner then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return ARGV[1]
end
if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return owner
"""
"""Claim a free key, renew the claimant's own, or name the owner: one atomic step."""


@dataclass(frozen=True)
class _Sent:
    """An ``EXEC`` whose reply never came back: it may or may not have been applied."""

    txn: str
    sealed: list[AuditEvent]
    record_json: str | None


def connect(url: str) -> tuple[aioredis.Redis, str]:
    """A client for ``url`` with LAM's timeouts, and the URL with its password masked.

    Raises ``ConfigError`` naming ``REDIS_URL`` when it is not a Redis URL. The client
    connects lazily: the caller's first command finds out whether the server is there.
    """
    masked = mask_url(url)
    try:
        client = aioredis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            # A few quick retries ride out a restart; a server that stays away is
            # reported within a second rather than after redis-py's default ten.
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.25), retries=3),
        )
    except ValueError as error:
        raise ConfigError(
            f"REDIS_URL {masked!r} is not a Redis URL ({error}); use"
            " redis://[user:password@]host:port/db or rediss://… for TLS"
        ) from error
    return client, masked


class RedisStore:
    """The ``Store`` kept in Redis; open it with ``RedisStore.open``."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "lam:",
        url: str = "",
        audit_page_size: int = 500,
    ) -> None:
        if audit_page_size < 1:
            raise ValueError(f"audit_page_size must be at least 1, not {audit_page_size!r}")
        self.prefix = prefix
        self.url = url
        """The server's URL with its password masked, for messages."""
        self.audit_page_size = audit_page_size
        """How many audit events ``audit_events`` reads at a time."""
        self.retries = 0
        """How many transactions started over because another writer moved first (a metric)."""
        self._redis = client
        self._claim_script = client.register_script(CLAIM_SCRIPT)
        # One change at a time per store: coroutines of one process queue here instead of
        # failing each other's EXEC on the shared chain head and burning their attempts.
        self._writing = asyncio.Lock()

    @classmethod
    async def open(
        cls, url: str, *, prefix: str = "lam:", audit_page_size: int = 500
    ) -> RedisStore:
        """The store on the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        Raises ``ConfigError`` naming ``REDIS_URL`` (its password masked) when the URL is
        not a Redis URL, the server cannot be reached or refuses the credentials.
        """
        client, masked = connect(url)
        store = cls(client, prefix=prefix, url=masked, audit_page_size=audit_page_size)
        try:
            await client.ping()
            await store._check_schema()
        except (*UNREACHABLE, ResponseError) as error:
            await client.aclose()
            raise ConfigError(
                f"REDIS_URL {masked!r}: cannot use Redis ({error}); check the host, the port"
                " and the credentials"
            ) from error
        except BaseException:
            await client.aclose()
            raise
        return store

    async def _check_schema(self) -> None:
        key = self._key("schema")
        await self._redis.set(key, SCHEMA_VERSION, nx=True)
        found = int(await self._redis.get(key) or SCHEMA_VERSION)
        if found > SCHEMA_VERSION:
            raise ConfigError(
                f"the keys under {self.prefix!r} were written by a newer LAM (schema {found});"
                " upgrade LAM or choose another prefix"
            )

    async def create(self, record: RequestRecord, events: Sequence[AuditEvent]) -> RequestRecord:
        """Store a new request (its ``version`` becomes 1) with its first audit events.

        Raises ``IllegalTransition`` when a request with that id exists already.
        """
        stored = record.model_copy(update={"version": 1, "updated_at": utcnow()})
        _log(await self._commit(stored, None, events))
        return stored

    async def save(
        self, record: RequestRecord, expected_version: int, events: Sequence[AuditEvent]
    ) -> RequestRecord:
        """Replace a request if it is still at ``expected_version``, and append ``events``.

        Returns the record as stored (``version`` bumped). Raises ``ConcurrentUpdate`` when
        another writer got there first, ``UnknownRequest`` when there is no such request.
        """
        stored = record.model_copy(update={"version": expected_version + 1, "updated_at": utcnow()})
        _log(await self._commit(stored, expected_version, events))
        return stored

    async def append(self, events: Sequence[AuditEvent]) -> None:
        """Append audit events that change no request (a policy reload), atomically."""
        _log(await self._commit(None, None, events))

    async def get(self, request_id: str) -> RequestRecord:
        """Raises ``UnknownRequest`` when there is no such request."""
        try:
            text = await self._redis.hget(self._request_key(request_id), "record")
        except UNREACHABLE as error:
            raise self._unreachable(error) from error
        if text is None:
            raise UnknownRequest(request_id)
        return RequestRecord.model_validate_json(text)

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
        if states is None:
            keys = ["index:all" if requester is None else f"index:requester:{requester}"]
        elif requester is None:
            keys = [f"index:state:{state}" for state in sorted(states)]
        else:
            keys = [f"index:state:{state}:requester:{requester}" for state in sorted(states)]
        records = await self._newest(keys, limit)
        # A record read after its index may have moved on since; it is shown only if it
        # still matches.
        return [
            record
            for record in records
            if (requester is None or record.request.requester == requester)
            and (states is None or record.state in states)
        ]

    async def history_by_action(self, action: str, *, limit: int = 20) -> list[RequestRecord]:
        """Most recent requests first whose plan has a step running ``action``."""
        return await self._newest([f"index:action:{action}"], limit)

    async def history_by_environment(
        self, environment: str, *, limit: int = 20
    ) -> list[RequestRecord]:
        """Most recent requests first aimed at ``environment`` (by the front, intent or plan)."""
        return await self._newest([f"index:environment:{environment}"], limit)

    async def audit_events(self, after_seq: int = 0) -> AsyncIterator[AuditEvent]:
        """The audit chain in order, starting after ``after_seq``, exactly as stored.

        Reads ``audit_page_size`` events at a time, so a long chain is never all in memory.
        Raises ``AuditChainBroken`` for a stream entry that is not an audit event at all,
        or whose id or fields do not match its event.
        """
        start = "-" if after_seq <= 0 else f"({after_seq}-0"
        while True:
            try:
                entries = await self._redis.xrange(
                    self._key("audit"), min=start, count=self.audit_page_size
                )
            except UNREACHABLE as error:
                raise self._unreachable(error) from error
            entries = entries or []
            for entry_id, fields in entries:
                yield _parse_entry(_text(entry_id) or "0-0", fields or {})
            if len(entries) < self.audit_page_size:
                return
            start = f"({_text(entries[-1][0])}"

    async def audit_head(self) -> tuple[int, str]:
        """The ``(seq, hash)`` of the last appended event; ``(0, "")`` when there is none.

        Kept apart from the events, so removing events from the end is detected too.
        """
        return await self._seq_and_hash("audit:head")

    async def audit_checkpoint(self) -> tuple[int, str]:
        """The ``(seq, hash)`` of the last event ``trim`` removed; ``(0, "")`` when none was.

        Verification of the remaining events starts from it.
        """
        return await self._seq_and_hash("audit:checkpoint")

    async def trim(self, keep_last: int) -> int:
        """Remove all but the last ``keep_last`` audit events; return how many went.

        The removed events are verified first, and the checkpoint moves to the last of them
        in the same transaction as the removal: a chain that does not verify is never
        trimmed (``AuditChainBroken``), so retention cannot erase evidence of tampering.
        """
        if keep_last < 0:
            raise ValueError(f"keep_last must be 0 or more, not {keep_last!r}")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    # Only another trim conflicts: appends add entries after the cut.
                    await pipe.watch(self._key("audit:checkpoint"))
                    checkpoint = _seq_and_hash(
                        await pipe.hmget(self._key("audit:checkpoint"), ["seq", "hash"])
                    )
                    head_seq, _ = await self.audit_head()
                    cut = head_seq - keep_last
                    if cut <= checkpoint[0]:
                        return 0
                    cut_hash = await self._verified_through(checkpoint, cut)
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                    pipe.xtrim(self._key("audit"), minid=f"{cut + 1}-0", approximate=False)
                    pipe.hset(self._key("audit:checkpoint"), mapping={"seq": cut, "hash": cut_hash})
                    removed, _ = await pipe.execute()
                    return int(removed)
            except WatchError:
                await _back_off(attempt)
            except UNREACHABLE as error:
                raise self._unreachable(error) from error
        raise StoreUnavailable(
            f"the audit trail under {self.prefix!r} was trimmed by others {MAX_ATTEMPTS} times"
            " while this trim ran; nothing was removed; try again"
        )

    async def claim(self, key: str, request_id: str, ttl: timedelta) -> str:
        """Claim ``key`` for ``request_id`` for ``ttl``; return the request id that owns it.

        One script, so no other client's command runs between reading the owner and
        claiming or renewing; Redis expires the claim by its own clock.
        """
        _check_ttl(ttl, "a claim")
        try:
            owner: bytes | str = await self._claim_script(
                keys=[self._key(f"dedupe:{key}")], args=[request_id, _milliseconds(ttl)]
            )
        except UNREACHABLE as error:
            raise self._unreachable(error) from error
        return _text(owner)

    async def remember(self, key: str, value: str, ttl: timedelta | None = None) -> None:
        """Keep ``value`` under ``key`` for ``ttl`` (Redis expires it) or for good."""
        if ttl is not None:
            _check_ttl(ttl, "a remembered value")
        try:
            await self._redis.set(
                self._key(f"memory:{key}"), value, px=None if ttl is None else _milliseconds(ttl)
            )
        except UNREACHABLE as error:
            raise self._unreachable(error) from error

    async def recall(self, key: str) -> str | None:
        """The value kept under ``key``; ``None`` when there is none or it has expired."""
        try:
            return _text(await self._redis.get(self._key(f"memory:{key}")))
        except UNREACHABLE as error:
            raise self._unreachable(error) from error

    async def aclose(self) -> None:
        """Close the connections once the operations in flight, if any, have finished."""
        async with self._writing:
            await self._redis.aclose()

    async def _commit(
        self,
        record: RequestRecord | None,
        expected_version: int | None,
        events: Sequence[AuditEvent],
    ) -> list[AuditEvent]:
        """Store ``record`` (created when ``expected_version`` is None) and chain ``events``.

        One transaction, started over while only the chain head moved under it; returns
        the events as sealed, once ``EXEC`` has applied them.
        """
        if record is None and not events:
            return []
        watched = [self._key("audit:head"), self._key("audit")]
        if record is not None:
            watched.append(self._request_key(record.id))
        async with self._writing:
            sent: _Sent | None = None
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    async with self._redis.pipeline(transaction=True) as pipe:
                        await pipe.watch(*watched)
                        if sent is not None:
                            if await self._landed(pipe, sent, record):
                                return sent.sealed
                            sent = None
                        txn = uuid.uuid4().hex
                        sealed, record_json = await self._stage(
                            pipe, record, expected_version, events, txn
                        )
                        sent = _Sent(txn, sealed, record_json)
                        await pipe.execute()
                        return sealed
                except WatchError:
                    # EXEC found the head or the request moved, or the connection dropped
                    # while watching. ``sent`` stays set once EXEC went out, so the next
                    # attempt first finds out whether that EXEC was applied after all.
                    self.retries += 1
                    await _back_off(attempt)
                except UNREACHABLE as error:
                    raise self._unreachable(
                        error, record=record, unsure=sent is not None
                    ) from error
        raise StoreUnavailable(
            f"the audit chain head under {self.prefix!r} kept moving: {MAX_ATTEMPTS} attempts"
            " to append after it failed and nothing was stored; retry, and if this persists"
            " run fewer writers"
        )

    async def _stage(
        self,
        pipe: Pipeline,
        record: RequestRecord | None,
        expected_version: int | None,
        events: Sequence[AuditEvent],
        txn: str,
    ) -> tuple[list[AuditEvent], str | None]:
        """Read what the change depends on, seal its events and queue its writes (MULTI)."""
        member = ""
        old_indexes: list[str] = []
        if record is not None:
            member, old_indexes = await self._read_request(pipe, record, expected_version)
        head_seq, head_hash = _seq_and_hash(
            await pipe.hmget(self._key("audit:head"), ["seq", "hash"])
        )
        if events:
            await self._check_stream_end(pipe, head_seq)
        sealed: list[AuditEvent] = []
        seq, prev_hash = head_seq, head_hash
        for event in events:
            seq += 1
            sealed.append(seal(event, seq, prev_hash))
            prev_hash = sealed[-1].hash

        pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        record_json = None
        if record is not None:
            record_json = canonical_json(record)
            # A new request's index member starts with the seq its first event takes.
            member = member or f"{head_seq + 1:016d}:{record.id}"
            new_indexes = _index_keys(record)
            pipe.hset(
                self._request_key(record.id),
                mapping={
                    "record": record_json,
                    "version": record.version,
                    "state": record.state,
                    "requester": record.request.requester,
                    "received_at": _utc(record.request.received_at).isoformat(),
                    "member": member,
                    "indexes": json.dumps(new_indexes),
                },
            )
            for key in set(old_indexes) - set(new_indexes):
                pipe.zrem(self._key(key), member)
            score = _score(record.request.received_at)
            for key in new_indexes:
                pipe.zadd(self._key(key), {member: score})
        for event in sealed:
            pipe.xadd(
                self._key("audit"),
                {"seq": event.seq, "hash": event.hash, "event": canonical_json(event), "txn": txn},
                id=f"{event.seq}-0",
            )
        if sealed:
            pipe.hset(self._key("audit:head"), mapping={"seq": seq, "hash": prev_hash})
        return sealed, record_json

    async def _read_request(
        self, pipe: Pipeline, record: RequestRecord, expected_version: int | None
    ) -> tuple[str, list[str]]:
        """Check the stored request allows the change; return its index member and keys."""
        version, member, indexes = await pipe.hmget(
            self._request_key(record.id), ["version", "member", "indexes"]
        )
        if expected_version is None:
            if version is not None:
                raise IllegalTransition(
                    f"a request with id {record.id!r} exists already; nothing was stored"
                )
            return "", []
        if version is None:
            raise UnknownRequest(record.id)
        if int(version) != expected_version:
            raise ConcurrentUpdate(
                f"request {record.id!r} is at version {_text(version)}, not {expected_version}:"
                " another writer changed it; re-read it and decide again"
            )
        return _text(member) or "", json.loads(_text(indexes) or "[]")

    async def _check_stream_end(self, pipe: Pipeline, head_seq: int) -> None:
        """Refuse to append when the stream holds an entry past the head that LAM never wrote.

        Redis does not roll a transaction back: an ``XADD`` refused inside ``EXEC`` would
        leave the record changed without its event. So the stream's last id is checked
        (under ``WATCH``) before anything is queued.
        """
        try:
            info = await pipe.xinfo_stream(self._key("audit"))
        except ResponseError as error:
            if "no such key" in str(error).lower():
                return  # No stream yet (or it was deleted): any id can be added.
            raise
        last = _text(info.get("last-generated-id")) or "0-0"
        if _id_order(last) <= (head_seq, 0):
            return
        # The head and the stream were read one after the other, not as one snapshot: a
        # writer may have appended in between. Then the head has moved too, and EXEC
        # would fail on it anyway; start over instead of crying wolf.
        moved, _ = _seq_and_hash(await pipe.hmget(self._key("audit:head"), ["seq", "hash"]))
        if moved != head_seq:
            raise WatchError(f"the audit head moved from {head_seq} to {moved}")
        raise AuditChainBroken(
            head_seq + 1,
            f"the audit stream has an entry {last!r} past the head (event {head_seq}) that"
            " LAM did not write; nothing was stored; run 'lam audit verify'",
        )

    async def _landed(self, pipe: Pipeline, sent: _Sent, record: RequestRecord | None) -> bool:
        """Whether an ``EXEC`` whose reply was lost was applied; read under ``WATCH``."""
        if sent.sealed:
            entry_id = f"{sent.sealed[0].seq}-0"
            entries = await pipe.xrange(self._key("audit"), min=entry_id, max=entry_id) or []
            return any(_text((fields or {}).get("txn")) == sent.txn for _, fields in entries)
        if record is None:
            return True
        stored = await pipe.hget(self._request_key(record.id), "record")
        return _text(stored) == sent.record_json

    async def _verified_through(self, start: tuple[int, str], cut: int) -> str:
        """Verify the events after ``start`` up to ``cut``; return the hash of event ``cut``."""
        expected_seq, prev_hash = start[0] + 1, start[1]
        async for event in self.audit_events(after_seq=start[0]):
            if event.seq != expected_seq:
                raise AuditChainBroken(
                    event.seq,
                    f"expected event {expected_seq} here (an event was removed, inserted or"
                    " moved); nothing was trimmed",
                )
            if event.prev_hash != prev_hash or chain_hash(prev_hash, event) != event.hash:
                raise AuditChainBroken(
                    event.seq, "does not verify (edited or relinked); nothing was trimmed"
                )
            prev_hash = event.hash
            if expected_seq == cut:
                return prev_hash
            expected_seq += 1
        raise AuditChainBroken(
            expected_seq, f"the chain ends before event {cut}; nothing was trimmed"
        )

    async def _newest(self, keys: list[str], limit: int) -> list[RequestRecord]:
        """The ``limit`` newest requests in any of the index ``keys``, newest first."""
        if limit <= 0:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrevrange(self._key(key), 0, limit - 1, withscores=True)
                ranked: list[list[tuple[str, float]]] = await pipe.execute()
            newest = heapq.nlargest(
                limit, {(score, _text(member)) for rows in ranked for member, score in rows}
            )
            if not newest:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for _, member in newest:
                    pipe.hget(self._request_key(member.partition(":")[2]), "record")
                texts: list[str | None] = await pipe.execute()
        except UNREACHABLE as error:
            raise self._unreachable(error) from error
        return [RequestRecord.model_validate_json(text) for text in texts if text is not None]

    async def _seq_and_hash(self, name: str) -> tuple[int, str]:
        try:
            return _seq_and_hash(await self._redis.hmget(self._key(name), ["seq", "hash"]))
        except UNREACHABLE as error:
            raise self._unreachable(error) from error

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _request_key(self, request_id: str) -> str:
        return f"{self.prefix}request:{request_id}"

    def _unreachable(
        self, error: Exception, *, record: RequestRecord | None = None, unsure: bool = False
    ) -> StoreUnavailable:
        if unsure:
            what = f"request {record.id!r}" if record is not None else "the audit events"
            return StoreUnavailable(
                f"lost Redis at {self.url!r} ({error}) while storing {what}: the change may or"
                " may not have been stored; read it again once Redis is back"
            )
        return StoreUnavailable(
            f"cannot reach Redis at {self.url!r} ({error}); nothing was changed; check that"
            " Redis is running and REDIS_URL points at it, then retry"
        )


def mask_url(url: str) -> str:
    """``url`` with its password (and any secret-looking query value) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    masked = url
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if at and colon:
        masked = masked.replace(parts.netloc, f"{user}:{MASK}@{host}", 1)
    if parts.query:
        query = "&".join(
            f"{name}={MASK}" if SECRET_KEY.search(unquote(name)) else f"{name}{eq}{value}"
            for name, eq, value in (pair.partition("=") for pair in parts.query.split("&"))
        )
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


def _index_keys(record: RequestRecord) -> list[str]:
    """The index keys (without prefix) ``record`` belongs in, in a stable order."""
    requester, state = record.request.requester, record.state
    keys = [
        "index:all",
        f"index:requester:{requester}",
        f"index:state:{state}",
        f"index:state:{state}:requester:{requester}",
    ]
    steps = record.plan.steps if record.plan is not None else ()
    keys += [f"index:action:{action}" for action in sorted({step.action for step in steps})]
    environments = {step.environment for step in steps}
    if record.intent is not None:
        environments.add(record.intent.environment)
    if record.request.environment is not None:
        environments.add(record.request.environment)
    keys += [f"index:environment:{env}" for env in sorted(environments)]
    return keys


def _parse_entry(entry_id: str, raw: Mapping[bytes | str, bytes | str]) -> AuditEvent:
    """The audit event a stream entry holds, checked against the entry's id and fields."""
    seq = int(entry_id.partition("-")[0])
    fields = {_text(name): _text(value) for name, value in raw.items()}
    try:
        event = AuditEvent.model_validate_json(fields.get("event") or "")
    except ValidationError as error:
        raise AuditChainBroken(
            seq, "the stored entry is not a valid audit event (edited)"
        ) from error
    if (entry_id, fields.get("seq"), fields.get("hash")) != (
        f"{event.seq}-0",
        str(event.seq),
        event.hash,
    ):
        raise AuditChainBroken(
            seq, f"stream entry {entry_id!r} does not match the event it holds (edited)"
        )
    return event


def _id_order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _seq_and_hash(values: Sequence[bytes | str | None]) -> tuple[int, str]:
    seq, hash_ = values
    return (int(seq), _text(hash_) or GENESIS_HASH) if seq is not None else (0, GENESIS_HASH)


@overload
def _text(value: bytes | str) -> str: ...
@overload
def _text(value: bytes | str | None) -> str | None: ...
def _text(value: bytes | str | None) -> str | None:
    """A reply as text; the client decodes replies, but redis-py types them as either."""
    return value.decode() if isinstance(value, bytes) else value


def _check_ttl(ttl: timedelta, what: str) -> None:
    if ttl <= timedelta(0):
        raise ValueError(f"{what}'s ttl must be positive, not {ttl!r}")


def _milliseconds(ttl: timedelta) -> int:
    """Whole milliseconds, rounded up: a ttl below one would otherwise be no ttl at all."""
    return -(-ttl // timedelta(milliseconds=1))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _score(moment: datetime) -> int:
    """Microseconds since the epoch: exact in a sorted set's double up to the year 2255."""
    delta = _utc(moment) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


async def _back_off(attempt: int) -> None:
    """A short random pause, longer after each failed attempt, so writers fall out of step."""
    await asyncio.sleep(random.uniform(0, min(0.0005 * attempt, 0.01)))  # noqa: S311


def _log(events: Sequence[AuditEvent]) -> None:
    """Mirror committed events into the structured log; only committed ones, never before."""
    for event in events:
        log_event(event)
