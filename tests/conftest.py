"""Shared fixtures: an engine on a real SQLite file, a real policy, scripted actions."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from bot.audit import Redactor
from bot.engine import Engine, EngineOptions
from bot.execution import ExecutionOptions
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from bot.store.sqlite import SqliteStore
from connectors import Catalog
from tests.support.actions import ScriptedConnector
from tests.support.openai_server import forbid_real_model_calls

# A private redis-server per test session, for every test that needs Redis.
pytest_plugins = ("tests.support.redis_server",)

REPO = Path(__file__).resolve().parent.parent

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


def write_policy(directory: Path, rules: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "policies" / "model.conf", directory / "model.conf")
    (directory / "policy.csv").write_text(rules, encoding="utf-8")
    return directory


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_policy(tmp_path / "policies", ENGINE_POLICY)


@pytest.fixture
def connector() -> ScriptedConnector:
    return ScriptedConnector()


EngineFactory = Callable[..., Engine]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "home" / "lam.db")
    yield store
    await store.aclose()


@pytest.fixture
def make_engine(
    store: SqliteStore, policy_dir: Path, connector: ScriptedConnector
) -> EngineFactory:
    """An engine factory; keyword arguments override its ``EngineOptions``."""

    def make(*, secrets: tuple[str, ...] = (), **options: object) -> Engine:
        defaults: dict[str, object] = {
            "execution": ExecutionOptions(max_attempts=3, backoff_base=0.001),
            "approval_ttl": timedelta(hours=1),
        }
        return Engine(
            store=store,
            policy=Policy.load(policy_dir),
            catalog=Catalog([connector]),
            planner=AliasPlanner(),
            options=EngineOptions(**{**defaults, **options}),  # type: ignore[arg-type]
            redactor=Redactor(secrets),
        )

    return make


@pytest.fixture
def engine(make_engine: EngineFactory) -> Engine:
    return make_engine()


@pytest.fixture(autouse=True)
def _no_real_model_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any openai client call to a non-loopback host fails the test."""
    forbid_real_model_calls(monkeypatch)
