"""Shared fixtures: engines on a real SQLite file or a Redis of the test's own, a real
policy, scripted actions, the scripted OpenAI-compatible server, and real ``lam`` processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from bot.audit import Redactor
from bot.engine import Engine, EngineOptions
from bot.execution import ExecutionOptions
from bot.jobs import JobQueue
from bot.planning import Planner
from bot.planning.aliases import AliasPlanner
from bot.planning.chain import ChainPlanner
from bot.policy import Policy
from bot.store import Store
from bot.store.redis import RedisStore
from bot.store.redis_jobs import RedisJobQueue
from bot.store.sqlite import SqliteStore
from connectors import Catalog
from tests.support.actions import ScriptedConnector
from tests.support.lam_process import LamProcesses
from tests.support.openai_server import ScriptedOpenAI, forbid_real_model_calls, planner_on

# Other test modules (tests/slack, test_policy_*) import REPO and write_policy from here.
from tests.support.policies import REPO as REPO
from tests.support.policies import write_policy

# A private redis-server per test session, for every test that needs Redis; the services
# and connectors the http and mcp connector tests share.
pytest_plugins = (
    "tests.support.redis_server",
    "tests.support.http_connector",
    "tests.support.mcp_connector",
)

APPROVERS = [f"user:lead{i}" for i in range(50)]

ENGINE_POLICY = """\
# alice may run the harmless test actions anywhere outside prod, request in prod.
g, user:alice, role:developer, *
g, user:dave, role:developer, staging
p, role:developer, staging, test.*, *, run, allow
p, role:developer, dev, test.*, *, run, allow
p, role:developer, prod, test.noop, *, run, allow
p, role:developer, prod, test.*, *, request, allow
p, role:developer, prod, test.purge, *, *, deny
# leads approve in prod.
g, user:bob, role:lead, *
g, user:erin, role:lead, *
p, role:lead, prod, test.*, *, approve, allow
p, role:lead, staging, test.*, *, run, allow
""" + "".join(f"g, {approver}, role:lead, *\n" for approver in APPROVERS)

QUEUE_IDLE_SECONDS = 0.3
"""How long a delivered job may go untouched before ``queued_engine``'s queue reclaims it."""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_policy(tmp_path / "policies", ENGINE_POLICY)


@pytest.fixture
def connector() -> ScriptedConnector:
    return ScriptedConnector()


EngineFactory = Callable[..., Engine]
RedisEngineFactory = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "home" / "lam.db")
    yield store
    await store.aclose()


@pytest.fixture
def make_engine(
    store: SqliteStore, policy_dir: Path, connector: ScriptedConnector
) -> EngineFactory:
    """An engine factory with the test policy and scripted actions, on the SQLite ``store``.

    ``store``, ``jobs`` and ``planner`` replace the SQLite store, the absent job queue and
    the offline phrasings; other keyword arguments override its ``EngineOptions``.
    """
    sqlite_store = store

    def make(
        *,
        store: Store | None = None,
        jobs: JobQueue | None = None,
        planner: Planner | None = None,
        secrets: tuple[str, ...] = (),
        **options: object,
    ) -> Engine:
        defaults: dict[str, object] = {
            "execution": ExecutionOptions(max_attempts=3, backoff_base=0.001),
            "approval_ttl": timedelta(hours=1),
        }
        return Engine(
            store=store or sqlite_store,
            policy=Policy.load(policy_dir),
            catalog=Catalog([connector]),
            planner=planner or AliasPlanner(),
            options=EngineOptions(**{**defaults, **options}),  # type: ignore[arg-type]
            redactor=Redactor(secrets),
            jobs=jobs,
        )

    return make


@pytest.fixture
def engine(make_engine: EngineFactory) -> Engine:
    return make_engine()


@pytest.fixture
async def open_redis_engine(
    make_engine: EngineFactory, redis_url: str, redis_prefix: str
) -> AsyncIterator[RedisEngineFactory]:
    """Opens ``make_engine`` engines on a Redis store under the test's own key prefix.

    With ``job_idle_timeout`` (seconds), approved requests go to a Redis job queue that
    reclaims a job left untouched that long. Every engine opened is closed afterwards.
    """
    opened: list[Engine] = []

    async def open_engine(*, job_idle_timeout: float | None = None, **overrides: object) -> Engine:
        store = await RedisStore.open(redis_url, prefix=redis_prefix)
        jobs = None
        if job_idle_timeout is not None:
            jobs = await RedisJobQueue.open(
                redis_url, prefix=redis_prefix, idle_timeout=job_idle_timeout
            )
        engine = make_engine(store=store, jobs=jobs, **overrides)
        opened.append(engine)
        return engine

    yield open_engine
    for engine in opened:
        await engine.aclose()


@pytest.fixture
async def queued_engine(open_redis_engine: RedisEngineFactory) -> Engine:
    """An engine on Redis whose approved requests wait in a Redis job queue for a worker."""
    return await open_redis_engine(job_idle_timeout=QUEUE_IDLE_SECONDS)


@pytest.fixture
async def openai_server() -> AsyncIterator[ScriptedOpenAI]:
    """The scripted OpenAI-compatible server; unexpected calls and unused replies fail."""
    async with ScriptedOpenAI.running() as scripted:
        yield scripted
        scripted.assert_done()


@pytest.fixture
async def make_llm_engine(
    make_engine: EngineFactory, openai_server: ScriptedOpenAI
) -> AsyncIterator[EngineFactory]:
    """``make_engine`` planning with the offline phrasings, then the scripted model."""
    planners: list[ChainPlanner] = []

    def make(**overrides: object) -> Engine:
        planner = ChainPlanner(AliasPlanner(), planner_on(openai_server))
        planners.append(planner)
        return make_engine(planner=planner, **overrides)

    yield make
    for planner in planners:
        await planner.aclose()


@pytest.fixture
def lam_processes(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[LamProcesses]:
    """Real ``lam`` processes on the session's Redis under the test's own key prefix."""
    with LamProcesses(tmp_path, redis_url, redis_prefix) as processes:
        yield processes


@pytest.fixture(autouse=True)
def _no_real_model_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any openai client call to a non-loopback host fails the test."""
    forbid_real_model_calls(monkeypatch)
