"""Building an engine from settings: the store, the policy, the connectors, the planner."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bot.audit import Redactor
from bot.config import Settings, load_config
from bot.engine import Engine, EngineOptions
from bot.errors import ConfigError
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from bot.store.sqlite import SqliteStore
from connectors import BUILTIN_CONNECTORS, Catalog, build_connectors, connector_types

# The sample policy ships in the wheel under bot/ and sits beside bot/ in a checkout.
PACKAGED_POLICIES = (
    Path(__file__).parent / "default_policies",
    Path(__file__).parent.parent / "policies",
)


def policy_dir(settings: Settings) -> Path:
    """``LAM_POLICY_DIR`` when set or present; otherwise the sample policy LAM ships."""
    configured = settings.lam_policy_dir.expanduser()
    if configured.is_dir():
        return configured
    if "LAM_POLICY_DIR" in settings.model_fields_set or configured != Path("policies"):
        raise ConfigError(f"LAM_POLICY_DIR: {str(configured)!r} is not a directory")
    for candidate in PACKAGED_POLICIES:
        if (candidate / "policy.csv").is_file():
            return candidate
    raise ConfigError("LAM_POLICY_DIR: no policies/ directory here; set LAM_POLICY_DIR")


def build_catalog(settings: Settings) -> Catalog:
    """The configured connectors' actions (``LAM_CONFIG``, or the built-ins)."""
    config = load_config(settings.lam_config)
    return Catalog(build_connectors(config.connectors, connector_types(BUILTIN_CONNECTORS)))


async def open_engine(settings: Settings, redactor: Redactor | None = None) -> Engine:
    redactor = redactor or Redactor(settings.secrets())
    policy = Policy.load(policy_dir(settings))
    catalog = build_catalog(settings)
    store = await SqliteStore.open(settings.database_path)
    return Engine(
        store=store,
        policy=policy,
        catalog=catalog,
        planner=AliasPlanner(),
        options=EngineOptions(
            environments=settings.environments,
            default_environment=settings.lam_default_environment,
            approval_ttl=timedelta(seconds=settings.lam_approval_ttl_seconds),
        ),
        redactor=redactor,
    )
