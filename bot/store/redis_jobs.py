"""The execution job queue on Redis: a stream read by a consumer group of workers.

Key layout, after the installation's prefix (the same one ``RedisStore`` uses):

- ``jobs``: a stream with one entry ``{request_id}`` per queued request, read by the
  consumer group ``workers``. An entry is removed once its job is done or buried, so the
  stream holds only jobs that wait or run.
- ``jobs:dead``: the dead-letter stream, one entry ``{request_id, reason, deliveries}``
  per job that was buried because it kept dying; capped at about ``DEAD_LETTERS_KEPT``.

A delivered job stays in the group's pending list until it is acknowledged. A worker
renews its claim (``touch``) while it works; a job whose worker has not renewed it for
``idle_timeout`` seconds is claimed by the next worker that asks (``XAUTOCLAIM``), which
counts as one more delivery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bot import metrics
from bot.errors import ConfigError, StoreUnavailable
from bot.jobs import Job
from bot.store.redis import COMMAND_TIMEOUT, UNREACHABLE, connect

GROUP = "workers"
DEAD_LETTERS_KEPT = 10_000
"""Roughly how many dead letters the stream keeps; each request's failure is audited anyway."""
MAX_BLOCK = COMMAND_TIMEOUT / 2
"""The longest a ``take`` blocks in one read: well inside the socket timeout."""
RECLAIM_SCANS = 100
"""``XAUTOCLAIM`` calls per ``take``, each looking at up to ten pending jobs."""

T = TypeVar("T")


class RedisJobQueue:
    """The ``JobQueue`` kept in Redis; open it with ``RedisJobQueue.open``."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "lam:",
        idle_timeout: float = 60.0,
        url: str = "",
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be more than 0 seconds, not {idle_timeout!r}")
        self.prefix = prefix
        self.idle_timeout = idle_timeout
        """Seconds without a ``touch`` after which another worker reclaims a job."""
        self.url = url
        """The server's URL with its password masked, for messages."""
        self.stream = f"{prefix}jobs"
        self.dead_stream = f"{prefix}jobs:dead"
        self._redis = client

    @classmethod
    async def open(
        cls, url: str, *, prefix: str = "lam:", idle_timeout: float = 60.0
    ) -> RedisJobQueue:
        """The queue on the Redis at ``url``, its stream and consumer group created if new.

        Raises ``ConfigError`` naming ``REDIS_URL`` (its password masked) when the URL is
        not a Redis URL or the server cannot be used.
        """
        client, masked = connect(url)
        queue = cls(client, prefix=prefix, idle_timeout=idle_timeout, url=masked)
        try:
            await queue._create_group()
        except (*UNREACHABLE, ResponseError) as error:
            await client.aclose()
            raise ConfigError(
                f"REDIS_URL {masked!r}: cannot use Redis for the job queue ({error}); check"
                " the host, the port and the credentials"
            ) from error
        except BaseException:
            await client.aclose()
            raise
        return queue

    async def submit(self, request_id: str) -> None:
        """Queue an approved request for execution."""
        await self._call(
            "queue a job", lambda: self._redis.xadd(self.stream, {"request_id": request_id})
        )

    async def take(self, consumer: str, wait: float) -> Job | None:
        """A job abandoned by a dead worker first, else a new one; ``None`` after ``wait`` s.

        A single read blocks at most ``MAX_BLOCK`` seconds, however long ``wait`` is.
        """
        return await self._call("take a job", lambda: self._take(consumer, wait), regroup=True)

    async def touch(self, job: Job, consumer: str) -> None:
        """Reset the job's idle time, so no other worker reclaims it while it runs.

        ``JUSTID`` leaves the delivery count alone: a heartbeat is not a delivery.
        """
        await self._call(
            "renew a job",
            lambda: self._redis.xclaim(
                self.stream, GROUP, consumer, min_idle_time=0, message_ids=[job.id], justid=True
            ),
        )

    async def done(self, job: Job) -> None:
        """Acknowledge the job and remove its entry; it is never delivered again."""

        async def acknowledge() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, GROUP, job.id)
                pipe.xdel(self.stream, job.id)
                await pipe.execute()

        await self._call("acknowledge a job", acknowledge)

    async def bury(self, job: Job, reason: str) -> None:
        """Move the job to the dead-letter stream and out of the queue, in one transaction."""

        async def move() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(
                    self.dead_stream,
                    {"request_id": job.request_id, "reason": reason, "deliveries": job.deliveries},
                    maxlen=DEAD_LETTERS_KEPT,
                    approximate=True,
                )
                pipe.xack(self.stream, GROUP, job.id)
                pipe.xdel(self.stream, job.id)
                await pipe.execute()

        await self._call("bury a job", move)

    async def release(self, job: Job, consumer: str, *, started: bool) -> None:
        """Make the job claimable by the next worker that asks, without waiting for it to idle.

        The entry stays pending (a job is never without an owner), but its delivery time
        goes back to the epoch, so the next ``take`` reclaims it. ``RETRYCOUNT`` undoes
        this worker's delivery of a job it never ``started``; a started one keeps it, so
        the next worker knows the request may be half run.
        """
        count = job.deliveries if started else job.deliveries - 1
        await self._call(
            "release a job",
            lambda: self._redis.xclaim(
                self.stream,
                GROUP,
                consumer,
                min_idle_time=0,
                message_ids=[job.id],
                time=1,
                retrycount=max(0, count),
                justid=True,
            ),
        )

    async def depth(self) -> int:
        """Jobs not yet delivered to any worker: the stream's entries less the pending ones.

        Done and buried jobs are deleted from the stream, so what is left either waits or
        is pending with a worker.
        """

        async def count() -> int:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xlen(self.stream)
                pipe.xpending(self.stream, GROUP)
                length, pending = await pipe.execute()
            return max(0, int(length) - int(pending["pending"]))

        return await self._call("count the waiting jobs", count, regroup=True)

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _take(self, consumer: str, wait: float) -> Job | None:
        reclaimed = await self._reclaim(consumer)
        if reclaimed is not None:
            return reclaimed
        # BLOCK 0 would wait forever: no wait at all is no BLOCK.
        block = max(0, round(min(wait, MAX_BLOCK) * 1000)) or None
        reply = await self._redis.xreadgroup(
            GROUP, consumer, {self.stream: ">"}, count=1, block=block
        )
        # The client speaks RESP2: [[stream, [(entry id, fields), ...]]], empty if none came.
        streams: list[list[Any]] = reply if isinstance(reply, list) else []
        for _, entries in streams:
            for entry_id, fields in entries:
                job = await self._job(entry_id, fields, deliveries=1)
                if job is not None:
                    return job
        return None

    async def _reclaim(self, consumer: str) -> Job | None:
        """Claim the oldest job nobody renewed for ``idle_timeout``; ``None`` if there is none."""
        start = "0-0"
        min_idle = max(1, round(self.idle_timeout * 1000))
        for _ in range(RECLAIM_SCANS):
            reply = await self._redis.xautoclaim(
                self.stream, GROUP, consumer, min_idle_time=min_idle, start_id=start, count=1
            )
            start, entries = str(reply[0]), reply[1]
            for entry_id, fields in entries:
                # XAUTOCLAIM counted this delivery; XPENDING tells how many there were.
                pending = await self._redis.xpending_range(
                    self.stream, GROUP, min=entry_id, max=entry_id, count=1
                )
                deliveries = int(pending[0]["times_delivered"]) if pending else 2
                job = await self._job(entry_id, fields, deliveries=deliveries)
                if job is not None:
                    metrics.JOBS_RECLAIMED.inc()
                    return job
            if start == "0-0":
                return None
        return None

    async def _job(
        self, entry_id: str, fields: Mapping[str, Any] | None, *, deliveries: int
    ) -> Job | None:
        """The job an entry holds; an entry that holds none is acknowledged and dropped."""
        request_id = (fields or {}).get("request_id")
        if not request_id:
            await self.done(Job(request_id="", id=entry_id))
            return None
        return Job(request_id=str(request_id), id=str(entry_id), deliveries=deliveries)

    async def _create_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if not str(error).startswith("BUSYGROUP"):
                raise

    async def _call(
        self, what: str, command: Callable[[], Awaitable[T]], *, regroup: bool = False
    ) -> T:
        """Run ``command``; Redis going away or refusing becomes ``StoreUnavailable``.

        With ``regroup``, a missing consumer group (a Redis restarted without its data) is
        created again and the command tried once more.
        """
        try:
            try:
                return await command()
            except ResponseError as error:
                if not (regroup and str(error).startswith("NOGROUP")):
                    raise
                await self._create_group()
                return await command()
        except UNREACHABLE as error:
            raise StoreUnavailable(
                f"cannot reach Redis at {self.url!r} to {what} ({error}); check that Redis"
                " is running and REDIS_URL points at it"
            ) from error
        except ResponseError as error:
            raise StoreUnavailable(f"Redis at {self.url!r} refused to {what}: {error}") from error
