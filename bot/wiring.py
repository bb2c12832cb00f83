"""Building an engine from settings: the store, the policy, the connectors, the planner."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

from bot import metrics
from bot.audit import Redactor
from bot.config import LamConfig, Settings, load_config
from bot.engine import Engine, EngineOptions
from bot.errors import ConfigError
from bot.jobs import JobQueue
from bot.planning.aliases import AliasPlanner
from bot.planning.chain import ChainPlanner
from bot.planning.llm import LLMOptions, LLMPlanner
from bot.policy import Policy
from bot.store import Store
from bot.store.redis import RedisStore, mask_url
from bot.store.redis_jobs import RedisJobQueue
from bot.store.sqlite import SqliteStore
from connectors import BUILTIN_CONNECTORS, Catalog, connector_types, start_connectors

REDIS_START_TIMEOUT = 5.0
"""Seconds start-up waits for Redis before it stops, naming REDIS_URL."""

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


async def build_catalog(
    settings: Settings, redactor: Redactor | None = None, *, config: LamConfig | None = None
) -> Catalog:
    """Start the configured connectors (``config``, else ``LAM_CONFIG``, else the built-ins).

    An instance that cannot start is in ``Catalog.failures`` (and counted in
    ``lam_connectors_failed``); the others work. Their secrets join ``redactor`` before
    any of them can appear in a log line.
    """
    config = config or load_config(settings.lam_config)
    catalog = await start_connectors(
        config.connectors,
        connector_types(BUILTIN_CONNECTORS),
        start_within=settings.lam_connector_start_seconds,
    )
    if redactor is not None:
        redactor.add(catalog.secrets)
    metrics.CONNECTORS_FAILED.set(len(catalog.failures))
    return catalog


async def open_store(settings: Settings) -> tuple[Store, JobQueue | None]:
    """Redis and its job queue when ``REDIS_URL`` is set; else the embedded SQLite store.

    Without a queue, approved requests run in the process that approves them. Raises
    ``ConfigError`` naming ``REDIS_URL`` when Redis cannot be used, within
    ``REDIS_START_TIMEOUT`` seconds even when the host does not answer at all.
    """
    if settings.redis_url is None:
        return await SqliteStore.open(settings.database_path), None
    url = settings.redis_url.get_secret_value()
    try:
        async with asyncio.timeout(REDIS_START_TIMEOUT):
            store = await RedisStore.open(url, prefix=settings.lam_redis_prefix)
    except TimeoutError:
        raise ConfigError(
            f"REDIS_URL {mask_url(url)!r}: no answer from Redis within"
            f" {REDIS_START_TIMEOUT:g}s; check the host, the port and any firewall"
        ) from None
    try:
        async with asyncio.timeout(REDIS_START_TIMEOUT):
            jobs = await RedisJobQueue.open(
                url, prefix=settings.lam_redis_prefix, idle_timeout=settings.lam_job_idle_seconds
            )
    except TimeoutError:
        await store.aclose()
        raise ConfigError(
            f"REDIS_URL {mask_url(url)!r}: Redis stopped answering while the job queue was"
            f" opened (no answer within {REDIS_START_TIMEOUT:g}s)"
        ) from None
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
    """The engine ``settings`` describe; ``ConfigError`` naming the first bad setting.

    The quick checks come first (the policy files, ``lam.yaml``, the model settings),
    then the store, then the connectors, which may take a while to start: a bad setting
    stops start-up within seconds, and nothing is left open.
    """
    redactor = redactor or Redactor(settings.secrets())
    policy = Policy.load(policy_dir(settings))
    config = load_config(settings.lam_config)
    planner = build_planner(settings, redactor)
    async with contextlib.AsyncExitStack() as opened:
        opened.push_async_callback(planner.aclose)
        store, jobs = await open_store(settings)
        opened.push_async_callback(store.aclose)
        if jobs is not None:
            opened.push_async_callback(jobs.aclose)
        catalog = await build_catalog(settings, redactor, config=config)
        engine = Engine(
            store=store,
            policy=policy,
            catalog=catalog,
            planner=planner,
            options=EngineOptions(
                environments=settings.environments,
                default_environment=settings.lam_default_environment,
                approval_ttl=timedelta(seconds=settings.lam_approval_ttl_seconds),
                max_clarifications=settings.lam_max_clarifications,
                max_revisions=settings.lam_max_revisions,
            ),
            redactor=redactor,
            jobs=jobs,
        )
        # Everything opened now belongs to the engine, which closes it.
        opened.pop_all()
    return engine
