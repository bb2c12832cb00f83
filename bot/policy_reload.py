"""Reloading policy without a restart.

A changed policy directory is loaded and its own tests (``tests/*.yaml``) are run before
it replaces the policy in force. A policy that does not parse or fails a test is refused:
the old one stays, and the refusal is logged and audited. Changes are found by content,
not by modification time, because a Kubernetes ConfigMap update swaps a symlink and keeps
old timestamps.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import structlog

from bot.engine import Engine
from bot.errors import ConfigError
from bot.models import AuditEvent, Risk
from bot.policy import Policy
from bot.policy_tests import run_policy_tests

log = structlog.get_logger("lam.policy")

Outcome = Literal["unchanged", "reloaded", "refused"]


def fingerprint(directory: Path) -> str:
    """sha256 over the names and contents of every file that makes up the policy."""
    digest = hashlib.sha256()
    files = [directory / "model.conf", directory / "policy.csv"]
    tests = directory / "tests"
    if tests.is_dir():
        files += sorted([*tests.glob("*.yaml"), *tests.glob("*.yml")])
    for path in files:
        digest.update(str(path.relative_to(directory)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError as error:
            digest.update(f"unreadable: {error.strerror}".encode())
    return digest.hexdigest()


class PolicyReloader:
    """Watches one policy directory and swaps a changed, tested policy into the engine."""

    def __init__(self, engine: Engine, directory: Path, risks: Mapping[str, Risk]) -> None:
        self.engine = engine
        self.directory = directory
        self.risks = dict(risks)
        """Each action's declared risk, so the policy tests decide as the engine will."""
        self._seen = fingerprint(directory)

    async def check(self) -> Outcome:
        """Reload if the files changed since the last check; say what happened."""
        current = await asyncio.to_thread(fingerprint, self.directory)
        if current == self._seen:
            return "unchanged"
        self._seen = current
        try:
            policy = await asyncio.to_thread(self._load_tested)
        except ConfigError as error:
            log.error("policy.refused", directory=str(self.directory), error=str(error))
            await self._audit("policy.refused", f"kept the policy in force: {error}")
            return "refused"
        self.engine.policy = policy
        log.info("policy.reloaded", directory=str(self.directory), fingerprint=current)
        await self._audit("policy.reloaded", f"policy files sha256 {current}")
        return "reloaded"

    async def run(self, stop: asyncio.Event, interval: float = 5.0) -> None:
        """Check every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.check()
            except Exception:  # a watcher that dies would silently freeze the policy
                log.exception("policy.watch_failed", directory=str(self.directory))
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                continue

    def _load_tested(self) -> Policy:
        policy = Policy.load(self.directory)
        tests = self.directory / "tests"
        if tests.is_dir():
            failed = [r for r in run_policy_tests(policy, tests, self.risks) if not r.passed]
            if failed:
                raise ConfigError(
                    f"{len(failed)} policy test(s) fail, first: {failed[0].describe()}"
                )
        return policy

    async def _audit(self, kind: Literal["policy.reloaded", "policy.refused"], reason: str) -> None:
        event = AuditEvent(kind=kind, request_id=None, actor="lam", state=None, reason=reason)
        await self.engine.store.append([self.engine.redactor.model(event)])
