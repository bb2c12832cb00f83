"""One policy across replicas: a reload on one replica is shared through Redis.

Each replica watches its own policy directory with a ``PolicyReloader``. When one of them
brings a new policy into force from its files, ``PolicyShare`` publishes the files' texts;
every other replica writes them to a private temporary directory, loads them, runs their
tests and swaps them in exactly as it would its own files, or refuses them and keeps the
policy in force. Either way each replica audits what it did.

Keys and channels, after the installation's prefix:

- ``policy`` (a key): the last policy shared, as JSON ``{fingerprint, files, origin}``:
  ``files`` maps each file's path within the policy directory (``model.conf``,
  ``policy.csv``, ``tests/*.yaml``) to its text, and ``origin`` names the replica.
- ``policy`` (a channel): the fingerprint, published in the same transaction that sets the
  key.

A replica disconnected from Redis misses what is published meanwhile: when it subscribes
again it reads the key, and adopts the policy there if it changed since it last looked.
What was shared before a replica started is not adopted: a replica starts with its own
files, and sharing spreads the changes made while replicas run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError, field_validator
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from bot.errors import ConfigError
from bot.models import Model, Risk
from bot.policy import Policy
from bot.policy_reload import (
    Outcome,
    PolicyReloader,
    audit_policy,
    fingerprint,
    load_tested,
    policy_texts,
)
from bot.store.redis import COMMAND_TIMEOUT, CONNECT_TIMEOUT, UNREACHABLE, mask_url

log = structlog.get_logger("lam.policy")

RECONNECT_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=5.0)
"""Seconds between attempts to subscribe again: random, growing with each failure."""
_FILE_NAME = re.compile(r"(model\.conf|policy\.csv|tests/[\w.-]+\.ya?ml)")


class SharedPolicy(Model):
    """The policy files one replica shares with the others, as stored under ``policy``."""

    fingerprint: str
    """sha256 over the files, as ``bot.policy_reload.fingerprint`` takes it."""
    files: dict[str, str]
    """Each file's text by its path within the policy directory."""
    origin: str
    """The replica that shared it."""

    @field_validator("files")
    @classmethod
    def _only_policy_files(cls, files: dict[str, str]) -> dict[str, str]:
        """Paths come from Redis: only the policy's own names, never one leaving the directory."""
        for name in files:
            if not _FILE_NAME.fullmatch(name) or ".." in name:
                raise ValueError(f"{name!r} is not a policy file")
        return files


class PolicyShare:
    """Shares the policies a replica's reloader brings into force, and adopts the others'.

    Building it makes it the reloader's ``on_reload``; ``run`` follows the other replicas
    until stopped.
    """

    def __init__(
        self,
        reloader: PolicyReloader,
        url: str,
        *,
        prefix: str = "lam:",
        replica: str | None = None,
    ) -> None:
        self.reloader = reloader
        self.url = mask_url(url)
        """The server's URL with its password masked, for messages."""
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        """This replica's name in what it shares, so it can tell its own publications."""
        self.subscriptions = 0
        """How many times the share has subscribed (again, after losing Redis)."""
        self.received = 0
        """How many publications (this replica's own included) the share has handled."""
        self.following = asyncio.Event()
        """Set while subscribed: what any replica shares now reaches this one."""
        self._key = f"{prefix}policy"
        self._last_shared: str | None = None
        """The fingerprint under the key when this share last looked."""
        self._unpublished: str | None = None
        """A local policy that could not be shared while Redis was away."""
        self._refused: str | None = None
        """The fingerprint (or, for a document that is not valid, the text) last refused."""
        self._changed = asyncio.Condition()
        try:
            self._redis = _client(url, Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.25), 3))
            # The subscription reconnects in ``run``, which then reads what it missed;
            # redis-py's own retries would resubscribe silently and miss it.
            self._subscriber = _client(url, Retry(NoBackoff(), 0))
        except ValueError as error:
            raise ConfigError(
                f"REDIS_URL {self.url!r} is not a Redis URL ({error}); use"
                " redis://[user:password@]host:port/db or rediss://… for TLS"
            ) from error
        reloader.on_reload = self.publish

    async def publish(self, fingerprint: str) -> None:
        """Share the policy this replica brought into force from its own files.

        A Redis that cannot be reached is logged, not raised: the policy stays in force
        here and is shared once the subscription is back.
        """
        try:
            found, files = await asyncio.to_thread(policy_texts, self.reloader.directory)
        except ConfigError as error:
            log.error("policy.share_failed", fingerprint=fingerprint, error=str(error))
            return
        if found != fingerprint:
            # The files changed again since they were loaded; the next check loads and
            # shares those.
            log.info("policy.share_skipped", fingerprint=fingerprint, files_now=found)
            return
        shared = SharedPolicy(fingerprint=fingerprint, files=files, origin=self.replica)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key, shared.model_dump_json())
                pipe.publish(self._key, fingerprint)
                await pipe.execute()
        except UNREACHABLE as error:
            self._unpublished = fingerprint
            log.error(
                "policy.share_failed",
                fingerprint=fingerprint,
                url=self.url,
                error=str(error),
                retry="when Redis is back",
            )
            return
        self._unpublished = None
        log.info("policy.shared", fingerprint=fingerprint, replica=self.replica)

    async def run(self, stop: asyncio.Event) -> None:
        """Adopt what other replicas share until ``stop`` is set; subscribe again if Redis goes."""
        failures = 0
        while not stop.is_set():
            subscriptions = self.subscriptions
            try:
                await self._follow(stop)
            except UNREACHABLE as error:
                log.warning("policy.share_disconnected", url=self.url, error=str(error))
            except Exception:  # a follower that dies would silently stop the sharing
                log.exception("policy.share_failed", url=self.url)
            finally:
                self.following.clear()
                await self._notify()
            failures = 1 if self.subscriptions > subscriptions else failures + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RECONNECT_BACKOFF.compute(failures))

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; it is checked each time the share acts."""
        async with self._changed:
            await self._changed.wait_for(condition)

    async def aclose(self) -> None:
        await self._subscriber.aclose()
        await self._redis.aclose()

    async def _follow(self, stop: asyncio.Event) -> None:
        """Subscribe, catch up on what was missed, then handle publications until ``stop``."""
        async with self._subscriber.pubsub() as pubsub:
            await pubsub.subscribe(self._key)
            # Once Redis confirms, every later publication reaches this subscription.
            confirmed = await pubsub.get_message(timeout=COMMAND_TIMEOUT)
            if confirmed is None or confirmed["type"] != "subscribe":
                raise RedisConnectionError(f"Redis did not confirm the subscription: {confirmed!r}")
            self.subscriptions += 1
            await self._catch_up(first=self.subscriptions == 1)
            self.following.set()
            await self._notify()
            await self._handle_publications(pubsub, stop)

    async def _handle_publications(self, pubsub: PubSub, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                receiving = asyncio.ensure_future(
                    pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                )
                await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()
                    await asyncio.gather(receiving, return_exceptions=True)
                    return
                message = receiving.result()
                if message is None or message["type"] != "message":
                    continue
                if message["data"] == self.reloader.in_force:
                    self._last_shared = message["data"]
                else:
                    await self._adopt_shared()
                self.received += 1
                await self._notify()
        finally:
            stopping.cancel()

    async def _catch_up(self, *, first: bool) -> None:
        """Share what failed to go out, then adopt what was shared while disconnected."""
        unpublished, self._unpublished = self._unpublished, None
        # A policy superseded since (by a later reload or a shared one) is not shared late.
        if unpublished is not None and unpublished == self.reloader.in_force:
            await self.publish(unpublished)
        if first:
            # What was shared before this replica started is not adopted (see above).
            self._last_shared = _fingerprint_in(await self._read_shared())
            return
        await self._adopt_shared(only_if_changed=True)

    async def _adopt_shared(self, *, only_if_changed: bool = False) -> Outcome:
        """Read the shared policy and bring it into force here, unless it is already."""
        text = await self._read_shared()
        if text is None:
            return "unchanged"
        try:
            shared = SharedPolicy.model_validate_json(text)
        except ValidationError as error:
            if self._refused != text:
                log.error("policy.refused", key=self._key, error=str(error))
                await audit_policy(
                    self.reloader.engine,
                    "policy.refused",
                    f"kept the policy in force: the policy shared under {self._key!r} is not"
                    f" valid: {error.errors()[0]['msg']}",
                )
                self._refused = text
            return "refused"
        if only_if_changed and shared.fingerprint == self._last_shared:
            return "unchanged"
        if shared.origin == self.replica or shared.fingerprint == self._refused:
            self._last_shared = shared.fingerprint
            return "unchanged"
        outcome = await self.reloader.adopt(
            shared.fingerprint,
            lambda: _load_shared(shared, self.reloader.risks),
            origin=shared.origin,
        )
        # Only once adopted or refused (and audited): a policy that could not be, because
        # the store was away, is tried again when the subscription starts over.
        self._last_shared = shared.fingerprint
        if outcome == "refused":
            # The same files would fail the same way: refuse them once, not on every look.
            self._refused = shared.fingerprint
        return outcome

    async def _read_shared(self) -> str | None:
        text = await self._redis.get(self._key)
        # The client decodes replies, but redis-py types them as bytes or text.
        return text.decode() if isinstance(text, bytes) else text

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _client(url: str, retry: Retry) -> aioredis.Redis:
    return aioredis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        socket_keepalive=True,
        retry=retry,
    )


def _fingerprint_in(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return SharedPolicy.model_validate_json(text).fingerprint
    except ValidationError:
        return None


def _load_shared(shared: SharedPolicy, risks: Mapping[str, Risk]) -> Policy:
    """Write the shared files to a private directory and load them as the reloader would."""
    with tempfile.TemporaryDirectory(prefix=f"lam-shared-policy-{shared.fingerprint[:12]}-") as tmp:
        directory = Path(tmp)
        try:
            for name, text in shared.files.items():
                path = directory / name
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(text.encode("utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot write the shared policy to {tmp!r}: {error}") from error
        found = fingerprint(directory)
        if found != shared.fingerprint:
            raise ConfigError(
                f"the shared files hash to sha256 {found}, not {shared.fingerprint}: they were"
                " changed on the way; share them again from a replica's own files"
            )
        return load_tested(directory, risks)
