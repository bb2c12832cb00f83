"""Building an engine from settings: the store, the policy, the connectors, the planner."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bot.audit import Redactor
from bot.config import Settings, load_config
from bot.engine import Engine, EngineOptions
from bot.errors import ConfigError
from bot.jobs import JobQueue
from bot.planning.aliases import AliasPlanner
from bot.planning.chain import ChainPlanner
from bot.planning.llm import LLMOptions, LLMPlanner
from bot.policy import Policy
from bot.store import Store
from bot.store.redis import RedisStore
from bot.store.redis_jobs import RedisJobQueue
from bot.store.sqlite import SqliteStore
from connectors import BUILTIN_CONNECTORS, Catalog, connector_types, start_connectors

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


async def build_catalog(settings: Settings, redactor: Redactor | None = None) -> Catalog:
    """Start the configured connectors (``LAM_CONFIG``, or the built-ins).

    An instance that cannot start is in ``Catalog.failures``; the others work. Their
    secrets join ``redactor`` before any of them can appear in a log line.
    """
    config = load_config(settings.lam_config)
    catalog = await start_connectors(
        config.connectors,
        connector_types(BUILTIN_CONNECTORS),
        start_within=settings.lam_connector_start_seconds,
    )
    if redactor is not None:
        redactor.add(catalog.secrets)
    return catalog


async def open_store(settings: Settings) -> tuple[Store, JobQueue | None]:
    """Redis and its job queue when ``REDIS_URL`` is set; else the embedded SQLite store.

    Without a queue, approved requests run in the process that approves them.
    """
    if settings.redis_url is None:
        return await SqliteStore.open(settings.database_path), None
    url = settings.redis_url.get_secret_value()
    store = await RedisStore.open(url, prefix=settings.lam_redis_prefix)
    try:
        jobs = await RedisJobQueue.open(
            url, prefix=settings.lam_redis_prefix, idle_timeout=settings.lam_job_idle_seconds
        )
    except BaseException:
        await store.aclose()
        raise
    return store, jobs


async def close_connectors(catalog: Catalog) -> None:
    for connector in catalog.connectors:
        await connector.aclose()


def build_planner(settings: Settings, redactor: Redactor) -> ChainPlanner:
    """The offline phrasings first; the model behind them when ``LAM_MODEL`` is set."""
    if settings.lam_model is None:
        return ChainPlanner(AliasPlanner(), None)
    if settings.openai_api_key is None and settings.openai_base_url is None:
        raise ConfigError(
            "LAM_MODEL is set but there is no model to ask: set OPENAI_API_KEY for OpenAI,"
            " or OPENAI_BASE_URL for an OpenAI-compatible server"
        )
    key = settings.openai_api_key
    options = LLMOptions(
        model=settings.lam_model,
        base_url=settings.openai_base_url,
        api_key=key.get_secret_value() if key is not None else None,
        timeout=settings.lam_llm_timeout_seconds,
        max_retries=settings.lam_llm_max_retries,
        max_repairs=settings.lam_llm_max_repairs,
        token_budget=settings.lam_llm_token_budget,
        max_steps=settings.lam_llm_max_steps,
    )
    return ChainPlanner(AliasPlanner(), LLMPlanner(options, redactor=redactor))


async def open_engine(settings: Settings, redactor: Redactor | None = None) -> Engine:
    redactor = redactor or Redactor(settings.secrets())
    policy = Policy.load(policy_dir(settings))
    catalog = await build_catalog(settings, redactor)
    try:
        store, jobs = await open_store(settings)
    except BaseException:
        await close_connectors(catalog)
        raise
    return Engine(
        store=store,
        policy=policy,
        catalog=catalog,
        planner=build_planner(settings, redactor),
        options=EngineOptions(
            environments=settings.environments,
            default_environment=settings.lam_default_environment,
            approval_ttl=timedelta(seconds=settings.lam_approval_ttl_seconds),
        ),
        redactor=redactor,
        jobs=jobs,
    )
