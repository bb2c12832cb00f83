"""A policy reloaded on one replica comes into force on the others, through Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import redis.asyncio as aioredis

from bot.engine import Engine
from bot.models import Request
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from bot.policy_reload import PolicyReloader, policy_texts
from bot.policy_share import PolicyShare, SharedPolicy
from bot.store import Store
from bot.store.redis import RedisStore
from bot.store.sqlite import SqliteStore
from connectors import Catalog
from tests.conftest import ENGINE_POLICY, write_policy
from tests.support.actions import ScriptedConnector
from tests.support.redis_server import RedisServer

DEADLINE = 10.0
"""Seconds a replica has to act on what another one shared before the test fails."""

STAGING_GRANT = "p, role:developer, staging, test.*, *, run, allow\n"
REVOKED = ENGINE_POLICY.replace(STAGING_GRANT, "")

StoreKind = Literal["redis", "sqlite"]


@dataclass
class Replica:
    name: str
    engine: Engine
    directory: Path
    reloader: PolicyReloader
    share: PolicyShare

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait, within the deadline, until ``condition`` holds after something the share did."""
        await asyncio.wait_for(self.share.wait_until(condition), DEADLINE)

    async def staging_noop(self) -> str:
        record = await self.engine.ask(Request(text="noop in staging", requester="user:alice"))
        return record.state


ReplicaFactory = Callable[..., AbstractAsyncContextManager[Replica]]


@pytest.fixture
def replica(tmp_path: Path, redis_url: str, redis_prefix: str) -> ReplicaFactory:
    """Starts a replica: its own policy directory, engine, reloader and following share."""

    @asynccontextmanager
    async def start(
        name: str, *, url: str = redis_url, store: StoreKind = "redis"
    ) -> AsyncIterator[Replica]:
        directory = write_policy(tmp_path / name / "policies", ENGINE_POLICY)
        opened: Store
        if store == "redis":
            # Replicas of one installation share its store, and so its audit trail.
            opened = await RedisStore.open(url, prefix=redis_prefix)
        else:
            opened = await SqliteStore.open(tmp_path / name / "lam.db")
        engine = Engine(
            store=opened,
            policy=Policy.load(directory),
            catalog=Catalog([ScriptedConnector()]),
            planner=AliasPlanner(),
        )
        reloader = PolicyReloader(engine, directory, {a.id: a.risk for a in engine.catalog})
        share = PolicyShare(reloader, url, prefix=redis_prefix, replica=name)
        stop = asyncio.Event()
        following = asyncio.create_task(share.run(stop))
        try:
            await asyncio.wait_for(share.following.wait(), DEADLINE)
            yield Replica(name, engine, directory, reloader, share)
        finally:
            stop.set()
            await asyncio.wait_for(following, DEADLINE)
            await share.aclose()
            await opened.aclose()

    return start


async def policy_events(replica: Replica) -> list[tuple[str, str]]:
    return [
        (e.kind, e.reason or "")
        async for e in replica.engine.store.audit_events()
        if e.kind.startswith("policy.")
    ]


def shared_policy(directory: Path, origin: str) -> SharedPolicy:
    fingerprint, files = policy_texts(directory)
    return SharedPolicy(fingerprint=fingerprint, files=files, origin=origin)


async def publish(url: str, prefix: str, shared: SharedPolicy) -> None:
    """Share a policy as a replica would, from outside any replica."""
    async with aioredis.from_url(url) as client, client.pipeline() as pipe:
        pipe.set(f"{prefix}policy", shared.model_dump_json())
        pipe.publish(f"{prefix}policy", shared.fingerprint)
        await pipe.execute()


@pytest.mark.parametrize("store", ["redis", "sqlite"])
async def test_a_reload_on_one_replica_comes_into_force_on_the_other(
    replica: ReplicaFactory, store: StoreKind
) -> None:
    """Revoking a grant on A's disk denies the next request on B, and each replica audits it."""
    async with replica("a", store=store) as a, replica("b", store=store) as b:
        assert await b.staging_noop() == "succeeded"
        (a.directory / "policy.csv").write_text(REVOKED)

        assert await a.reloader.check() == "reloaded"
        await b.until(lambda: b.reloader.in_force == a.reloader.in_force)

        assert await b.staging_noop() == "denied"
        assert await a.staging_noop() == "denied"
        fingerprint = a.reloader.in_force
        assert ("policy.reloaded", f"policy files sha256 {fingerprint}") in await policy_events(a)
        assert (
            "policy.reloaded",
            f"policy files sha256 {fingerprint} from another replica (a)",
        ) in await policy_events(b)
        # B's own files did not change: its reloader finds nothing to do.
        assert await b.reloader.check() == "unchanged"
        await b.engine.verify_audit()


async def test_a_replica_ignores_its_own_publication(replica: ReplicaFactory) -> None:
    """B handles the message of its own reload without loading or auditing anything more."""
    async with replica("a") as a, replica("b") as b:
        before = b.engine.policy
        (b.directory / "policy.csv").write_text(REVOKED)
        assert await b.reloader.check() == "reloaded"
        local = b.engine.policy
        assert local is not before

        await b.until(lambda: b.share.received == 1)
        await a.until(lambda: a.reloader.in_force == b.reloader.in_force)

        assert b.engine.policy is local
        fingerprint = b.reloader.in_force
        assert await policy_events(b) == [
            ("policy.reloaded", f"policy files sha256 {fingerprint}"),
            ("policy.reloaded", f"policy files sha256 {fingerprint} from another replica (b)"),
        ]


async def test_a_broken_shared_policy_is_refused_and_the_old_one_stays(
    replica: ReplicaFactory, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """A shared policy.csv that does not parse is refused on B, audited, and B keeps its policy."""
    async with replica("b") as b:
        before = b.engine.policy
        broken = write_policy(tmp_path / "broken", ENGINE_POLICY + "p, role:developer, prod\n")
        shared = shared_policy(broken, origin="replica-x")

        await publish(redis_url, redis_prefix, shared)
        await b.until(lambda: b.share.received == 1)

        assert b.engine.policy is before
        assert b.reloader.in_force != shared.fingerprint
        ((kind, reason),) = await policy_events(b)
        assert kind == "policy.refused"
        assert f"refused policy files sha256 {shared.fingerprint}" in reason
        assert "from another replica (replica-x)" in reason
        assert "policy.csv:" in reason
        assert "6 non-empty fields" in reason
        assert await b.staging_noop() == "succeeded"

        # The same files shared again are not refused (and audited) again.
        await publish(redis_url, redis_prefix, shared)
        await b.until(lambda: b.share.received == 2)
        assert len(await policy_events(b)) == 1


async def test_a_shared_policy_failing_its_own_tests_is_refused(
    replica: ReplicaFactory, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """Shared files whose policy breaks one of the shared tests never come into force on B."""
    async with replica("b") as b:
        before = b.engine.policy
        failing = write_policy(tmp_path / "failing", REVOKED)
        (failing / "tests").mkdir()
        (failing / "tests" / "basics.yaml").write_text(
            "- {subject: 'user:alice', environment: staging, action: test.noop, expect: allow}\n"
        )

        await publish(redis_url, redis_prefix, shared_policy(failing, origin="replica-x"))
        await b.until(lambda: b.share.received == 1)

        assert b.engine.policy is before
        ((kind, reason),) = await policy_events(b)
        assert kind == "policy.refused"
        assert "1 policy test(s) fail" in reason


async def test_shared_files_that_do_not_match_their_fingerprint_are_refused(
    replica: ReplicaFactory, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """Files altered after their fingerprint was taken are refused before they are loaded."""
    async with replica("b") as b:
        before = b.engine.policy
        shared = shared_policy(write_policy(tmp_path / "sent", REVOKED), origin="replica-x")
        altered = shared.model_copy(
            update={
                "files": {
                    **shared.files,
                    "policy.csv": ENGINE_POLICY + "g, user:eve, role:lead, *\n",
                }
            }
        )

        await publish(redis_url, redis_prefix, altered)
        await b.until(lambda: b.share.received == 1)

        assert b.engine.policy is before
        ((kind, reason),) = await policy_events(b)
        assert kind == "policy.refused"
        assert "changed on the way" in reason


async def test_a_shared_path_outside_the_policy_directory_is_refused(
    replica: ReplicaFactory, redis_url: str, redis_prefix: str
) -> None:
    """A document naming a file outside the policy directory is refused and audited."""
    async with replica("b") as b:
        before = b.engine.policy
        document = (
            '{"fingerprint": "0", "origin": "replica-x",'
            ' "files": {"model.conf": "", "policy.csv": "", "tests/../../escape.yaml": ""}}'
        )
        async with aioredis.from_url(redis_url) as client:
            await client.set(f"{redis_prefix}policy", document)
            await client.publish(f"{redis_prefix}policy", "0")
        await b.until(lambda: b.share.received == 1)

        assert b.engine.policy is before
        ((kind, reason),) = await policy_events(b)
        assert kind == "policy.refused"
        assert "is not a policy file" in reason


async def test_what_was_shared_before_a_replica_started_is_not_adopted(
    replica: ReplicaFactory, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """A replica starts with its own files; only what is shared while it runs reaches it."""
    older = shared_policy(write_policy(tmp_path / "older", REVOKED), origin="replica-x")
    await publish(redis_url, redis_prefix, older)
    async with replica("b") as b:
        assert b.reloader.in_force != older.fingerprint
        assert await b.staging_noop() == "succeeded"
        assert await policy_events(b) == []


async def test_the_subscription_survives_a_redis_restart(
    replica: ReplicaFactory, private_redis: RedisServer
) -> None:
    """After Redis restarts, both replicas subscribe again and a reload on A still reaches B."""
    async with replica("a", url=private_redis.url) as a, replica("b", url=private_redis.url) as b:
        private_redis.restart()
        await a.until(lambda: a.share.subscriptions == 2 and a.share.following.is_set())
        await b.until(lambda: b.share.subscriptions == 2 and b.share.following.is_set())

        (a.directory / "policy.csv").write_text(REVOKED)
        assert await a.reloader.check() == "reloaded"
        await b.until(lambda: b.reloader.in_force == a.reloader.in_force)
        assert await b.staging_noop() == "denied"


async def test_a_publication_missed_while_disconnected_is_adopted_on_reconnecting(
    replica: ReplicaFactory, private_redis: RedisServer, tmp_path: Path, redis_prefix: str
) -> None:
    """A policy shared while B's subscription was cut reaches B when it subscribes again."""
    async with replica("b", url=private_redis.url) as b:
        shared = shared_policy(write_policy(tmp_path / "newer", REVOKED), origin="replica-x")
        # Blocking calls: B cannot run, and so cannot subscribe again, before the
        # policy is shared.
        private_redis.command("CLIENT", "KILL", "TYPE", "pubsub")
        private_redis.command("SET", f"{redis_prefix}policy", shared.model_dump_json())
        assert private_redis.command("PUBLISH", f"{redis_prefix}policy", "x") == b":0"

        await b.until(lambda: b.reloader.in_force == shared.fingerprint)
        assert b.share.subscriptions == 2
        assert b.share.received == 0
        assert await b.staging_noop() == "denied"


async def test_a_reload_while_redis_is_away_is_shared_once_it_is_back(
    replica: ReplicaFactory, private_redis: RedisServer
) -> None:
    """A's reload, which it could not share with Redis stopped, reaches B after Redis returns."""
    url = private_redis.url
    async with (
        replica("a", url=url, store="sqlite") as a,
        replica("b", url=url, store="sqlite") as b,
    ):
        private_redis.stop(keep_data=True)
        (a.directory / "policy.csv").write_text(REVOKED)
        assert await a.reloader.check() == "reloaded"
        assert await b.staging_noop() == "succeeded"

        private_redis.start()
        await b.until(lambda: b.reloader.in_force == a.reloader.in_force)
        assert await b.staging_noop() == "denied"
