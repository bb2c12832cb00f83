"""Reloading policy without a restart.

A changed policy directory is loaded and its own tests (``tests/*.yaml``) are run before
it replaces the policy in force. A policy that does not parse or fails a test is refused:
the old one stays, and the refusal is logged and audited. Changes are found by content,
not by modification time, because a Kubernetes ConfigMap update swaps a symlink and keeps
old timestamps.

The same path brings in a policy another replica shared (``bot.policy_share``): whatever
its source, a policy comes into force only through ``PolicyReloader.adopt``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Literal

import structlog

from bot._policy_files import MODEL_FILE, POLICY_FILE
from bot.engine import Engine
from bot.errors import ConfigError
from bot.models import AuditEvent, Risk
from bot.policy import Policy
from bot.policy_tests import run_policy_tests

log = structlog.get_logger("lam.policy")

Outcome = Literal["unchanged", "reloaded", "refused"]

OnReload = Callable[[str], Awaitable[None]]
"""Called with the fingerprint of each policy a reloader brings into force from its files."""

TESTS_DIR = "tests"


def policy_paths(directory: Path) -> list[Path]:
    """The files that make up the policy in ``directory``, in the order they are hashed."""
    files = [directory / MODEL_FILE, directory / POLICY_FILE]
    tests = directory / TESTS_DIR
    if tests.is_dir():
        files += sorted([*tests.glob("*.yaml"), *tests.glob("*.yml")])
    return files


def fingerprint(directory: Path) -> str:
    """sha256 over the names and contents of every file that makes up the policy."""

    def contents(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as error:
            return f"unreadable: {error.strerror}".encode()

    return _digest(
        (str(path.relative_to(directory)), contents(path)) for path in policy_paths(directory)
    )


def policy_texts(directory: Path) -> tuple[str, dict[str, str]]:
    """The fingerprint and texts (by path within ``directory``) of the policy files, read once.

    Raises ``ConfigError`` when a file cannot be read or is not UTF-8.
    """
    files: dict[str, bytes] = {}
    for path in policy_paths(directory):
        try:
            files[str(path.relative_to(directory))] = path.read_bytes()
        except OSError as error:
            raise ConfigError(f"{str(path)!r}: cannot read it: {error.strerror}") from error
    try:
        texts = {name: content.decode("utf-8") for name, content in files.items()}
    except UnicodeDecodeError as error:
        raise ConfigError(f"a policy file in {str(directory)!r} is not UTF-8: {error}") from error
    return _digest(files.items()), texts


def _digest(files: Iterable[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, content in files:
        digest.update(name.encode())
        digest.update(content)
    return digest.hexdigest()


def load_tested(directory: Path, risks: Mapping[str, Risk]) -> Policy:
    """The policy in ``directory``, once its own tests pass; ``ConfigError`` otherwise."""
    policy = Policy.load(directory)
    tests = directory / TESTS_DIR
    if tests.is_dir():
        failed = [r for r in run_policy_tests(policy, tests, risks) if not r.passed]
        if failed:
            raise ConfigError(f"{len(failed)} policy test(s) fail, first: {failed[0].describe()}")
    return policy


class PolicyReloader:
    """Watches one policy directory and swaps a changed, tested policy into the engine."""

    def __init__(
        self,
        engine: Engine,
        directory: Path,
        risks: Mapping[str, Risk],
        *,
        on_reload: OnReload | None = None,
    ) -> None:
        self.engine = engine
        self.directory = directory
        self.risks = dict(risks)
        """Each action's declared risk, so the policy tests decide as the engine will."""
        self.on_reload = on_reload
        """Told after each policy brought into force from ``directory`` (to share it)."""
        self._seen = fingerprint(directory)
        self.in_force = self._seen
        """The fingerprint of the policy in force: from ``directory`` or shared by a replica."""
        # Local reloads and shared policies arrive on different tasks; one at a time keeps
        # ``in_force`` naming the policy the engine actually has.
        self._swapping = asyncio.Lock()

    async def check(self) -> Outcome:
        """Reload if the files changed since the last check; say what happened."""
        current = await asyncio.to_thread(fingerprint, self.directory)
        if current == self._seen:
            return "unchanged"
        outcome = await self.adopt(current, partial(load_tested, self.directory, self.risks))
        # Only now: files whose outcome could not be audited (the store was away) are
        # tried again on the next check.
        self._seen = current
        if outcome == "reloaded" and self.on_reload is not None:
            await self.on_reload(current)
        return outcome

    async def adopt(
        self, fingerprint: str, load: Callable[[], Policy], *, origin: str | None = None
    ) -> Outcome:
        """Bring the policy ``load`` returns into force, unless ``fingerprint`` is in force.

        ``load`` runs in a thread and raises ``ConfigError`` for a policy that must be
        refused. ``origin`` names the replica that shared the policy, ``None`` for this
        reloader's own directory. The outcome is logged and audited, and the audit comes
        first: when the store cannot take it, the policy in force stays (fail closed).
        """
        source = "" if origin is None else f" from another replica ({origin})"
        async with self._swapping:
            if fingerprint == self.in_force:
                return "unchanged"
            try:
                policy = await asyncio.to_thread(load)
            except ConfigError as error:
                log.error(
                    "policy.refused",
                    directory=str(self.directory),
                    fingerprint=fingerprint,
                    origin=origin,
                    error=str(error),
                )
                refused = "" if origin is None else f", refused policy files sha256 {fingerprint}"
                await audit_policy(
                    self.engine,
                    "policy.refused",
                    f"kept the policy in force{refused}{source}: {error}",
                )
                return "refused"
            await audit_policy(
                self.engine, "policy.reloaded", f"policy files sha256 {fingerprint}{source}"
            )
            self.engine.policy = policy
            self.in_force = fingerprint
            log.info(
                "policy.reloaded",
                directory=str(self.directory),
                fingerprint=fingerprint,
                origin=origin,
            )
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


async def audit_policy(
    engine: Engine, kind: Literal["policy.reloaded", "policy.refused"], reason: str
) -> None:
    """Append one event about the policy (of LAM itself, no request) to the audit trail."""
    event = AuditEvent(kind=kind, request_id=None, actor="lam", state=None, reason=reason)
    await engine.store.append([engine.redactor.model(event)])
