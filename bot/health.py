"""Health, readiness and metrics over HTTP, for ``lam serve`` and ``lam worker`` alike.

- ``GET /healthz``: the process answers (liveness); nothing else is checked.
- ``GET /readyz``: 200 when this replica can do its work: the store answers within
  ``READY_TIMEOUT`` seconds, a policy is loaded, the job queue (with Redis) answers, the
  Slack connection (Socket Mode) is up, and the process is not shutting down; else 503,
  naming each check that failed.
- ``GET /metrics``: the Prometheus exposition of ``bot.metrics.REGISTRY``; the job queue's
  depth is sampled at each scrape.

Connector instances that could not start are listed in the readiness body with their
reasons, but they do not make a replica unready. Every replica reads the same
``lam.yaml``, so a connector that fails on one fails on all: calling them unready would
take the whole front down (no replica left to answer anyone, not even for the actions
that work), and restarting the pod would not fix a configuration. Readiness says whether
to send this replica traffic; ``lam_connectors_failed`` is what to alert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot import metrics
from bot.engine import Engine
from bot.errors import ConfigError
from bot.policy import Policy

log = structlog.get_logger("lam.health")

READY_TIMEOUT = 2.0
"""Seconds one dependency has to answer before readiness calls it unreachable."""
OK = "ok"

Check = Callable[[], Awaitable[str]]
"""A readiness check of its own: returns ``"ok"`` or what is wrong."""


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, str]
    """Each check's outcome: ``ok`` or what is wrong."""
    connectors_failed: dict[str, str]
    """Connector instances that could not start, with why; they do not count against ready."""

    @property
    def ready(self) -> bool:
        return all(outcome == OK for outcome in self.checks.values())


@dataclass
class Health:
    """What the health endpoints look at: the engine, and whatever the front adds."""

    engine: Engine
    stopping: asyncio.Event | None = None
    """Set once the process is shutting down: it takes no new work, so it is not ready."""
    checks: Mapping[str, Check] = field(default_factory=dict)
    """More checks by name, e.g. the Slack connection."""

    async def readiness(self) -> Readiness:
        """Run every check, each within ``READY_TIMEOUT``, at the same time."""
        named: dict[str, Check] = {"store": self._store, "policy": self._policy}
        if self.engine.jobs is not None:
            named["job_queue"] = self._job_queue
        named.update(self.checks)
        outcomes = await asyncio.gather(*(_bounded(check) for check in named.values()))
        checks = dict(zip(named, outcomes, strict=True))
        if self.stopping is not None:
            checks["shutdown"] = "shutting down" if self.stopping.is_set() else OK
        return Readiness(checks, dict(self.engine.catalog.failures))

    async def sample(self) -> None:
        """Update the gauges that are read at scrape time rather than counted as things happen."""
        jobs = self.engine.jobs
        if jobs is None:
            return
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                metrics.JOB_QUEUE_DEPTH.set(await jobs.depth())
        except Exception as error:  # Whatever the queue raises, the depth is unknown now.
            # Not a number rather than the last value: a stale depth would look current.
            metrics.JOB_QUEUE_DEPTH.set(float("nan"))
            log.warning("metrics.queue_depth_unavailable", error=str(error))

    async def _store(self) -> str:
        await self.engine.store.audit_head()
        return OK

    async def _policy(self) -> str:
        return OK if isinstance(self.engine.policy, Policy) else "not loaded"

    async def _job_queue(self) -> str:
        assert self.engine.jobs is not None
        await self.engine.jobs.depth()
        return OK


async def _bounded(check: Check) -> str:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            return await check()
    except TimeoutError:
        return f"unreachable: no answer within {READY_TIMEOUT:g}s"
    except Exception as error:  # Whatever a dependency raises, it is not ready.
        return f"unreachable: {type(error).__name__}"


@dataclass(frozen=True)
class Answer:
    """One health endpoint's HTTP answer."""

    status: int
    content_type: str
    body: bytes


PATHS = ("/healthz", "/readyz", "/metrics")


async def answer(health: Health, path: str, outcomes: Mapping[str, str] | None = None) -> Answer:
    """What ``path`` (one of ``PATHS``) answers; ``outcomes`` are more readiness checks'
    results, from a process that ran them itself (the Slack ingress)."""
    if path == "/readyz":
        readiness = await health.readiness()
        checks = {**readiness.checks, **(outcomes or {})}
        ready = all(outcome == OK for outcome in checks.values())
        body: dict[str, object] = {"status": OK if ready else "unavailable", "checks": checks}
        if readiness.connectors_failed:
            body["connectors_failed"] = readiness.connectors_failed
        return Answer(200 if ready else 503, "application/json", json.dumps(body).encode())
    if path == "/metrics":
        await health.sample()
        return Answer(200, CONTENT_TYPE_LATEST, generate_latest(metrics.REGISTRY))
    if path == "/healthz":
        return Answer(200, "application/json", json.dumps({"status": OK}).encode())
    return Answer(404, "application/json", json.dumps({"error": f"no {path}"}).encode())


def response(found: Answer) -> web.Response:
    reply = web.Response(status=found.status, body=found.body)
    # aiohttp refuses a content type with parameters in its argument; set it whole.
    reply.headers["Content-Type"] = found.content_type
    return reply


def health_routes(health: Health) -> list[web.RouteDef]:
    """``/healthz``, ``/readyz`` and ``/metrics``, to add to any aiohttp application."""

    async def endpoint(request: web.Request) -> web.Response:
        return response(await answer(health, request.path))

    return [web.get(path, endpoint) for path in PATHS]


def health_application(health: Health) -> web.Application:
    """The health endpoints alone: for Socket Mode and for ``lam worker --health-port``."""
    application = web.Application()
    application.add_routes(health_routes(health))
    return application


@contextlib.asynccontextmanager
async def listening(application: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``application``; yields ``http://HOST:PORT`` (a free port when ``port`` is 0).

    Leaving the block stops accepting connections first, then waits (up to five seconds)
    for the requests in flight.
    """
    runner = web.AppRunner(application, shutdown_timeout=5.0, access_log=None)
    await runner.setup()
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            listener.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({error.strerror}); choose another port"
            ) from None
        bound = listener.getsockname()[1]
        await web.SockSite(runner, listener).start()
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 -- display only
        yield f"http://{shown}:{bound}"
    finally:
        await runner.cleanup()
        listener.close()
