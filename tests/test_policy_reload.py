"""Policy reloads without a restart; a bad or failing policy is refused and audited."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bot.engine import Engine
from bot.models import Request
from bot.policy_reload import PolicyReloader
from tests.conftest import ENGINE_POLICY, REPO
from tests.support.actions import ScriptedConnector

PASSING_TEST = """\
- {subject: 'user:alice', environment: staging, action: test.noop, expect: allow}
"""


def reloader_for(engine: Engine, policy_dir: Path) -> PolicyReloader:
    risks = {action.id: action.risk for action in engine.catalog}
    return PolicyReloader(engine, policy_dir, risks)


async def policy_events(engine: Engine) -> list[tuple[str, str]]:
    return [
        (e.kind, e.reason or "")
        async for e in engine.store.audit_events()
        if e.kind.startswith("policy.")
    ]


async def test_unchanged_files_are_not_reloaded(engine: Engine, policy_dir: Path) -> None:
    """Checking an untouched directory changes nothing and audits nothing."""
    before = engine.policy
    assert await reloader_for(engine, policy_dir).check() == "unchanged"
    assert engine.policy is before
    assert await policy_events(engine) == []


async def test_a_changed_policy_takes_effect_without_a_restart(
    engine: Engine, policy_dir: Path, connector: ScriptedConnector
) -> None:
    """Revoking a grant in policy.csv stops the next request, and the reload is audited."""
    reloader = reloader_for(engine, policy_dir)
    assert (await engine.ask(Request(text="noop in staging", requester="user:alice"))).state == (
        "succeeded"
    )
    (policy_dir / "policy.csv").write_text(
        ENGINE_POLICY.replace("p, role:developer, staging, test.*, *, run, allow\n", "")
    )
    assert await reloader.check() == "reloaded"
    denied = await engine.ask(Request(text="noop in staging", requester="user:alice"))
    assert denied.state == "denied"
    assert connector.calls["test.noop"] == 1
    ((kind, reason),) = await policy_events(engine)
    assert kind == "policy.reloaded"
    assert reason.startswith("policy files sha256 ")
    await engine.verify_audit()


async def test_a_policy_that_does_not_parse_is_refused_and_the_old_one_stays(
    engine: Engine, policy_dir: Path
) -> None:
    """A malformed policy.csv is refused with its line, audited, and the old policy stays."""
    reloader = reloader_for(engine, policy_dir)
    before = engine.policy
    (policy_dir / "policy.csv").write_text(ENGINE_POLICY + "p, role:developer, prod\n")
    assert await reloader.check() == "refused"
    assert engine.policy is before
    ((kind, reason),) = await policy_events(engine)
    assert kind == "policy.refused"
    assert "policy.csv:" in reason
    assert "6 non-empty fields" in reason
    # The same broken files are not refused again on every check.
    assert await reloader.check() == "unchanged"


async def test_a_policy_failing_its_own_tests_is_refused(engine: Engine, policy_dir: Path) -> None:
    """A policy that parses but breaks one of its tests never comes into force."""
    (policy_dir / "tests").mkdir()
    (policy_dir / "tests" / "basics.yaml").write_text(PASSING_TEST)
    reloader = reloader_for(engine, policy_dir)
    before = engine.policy
    (policy_dir / "policy.csv").write_text(
        ENGINE_POLICY.replace("p, role:developer, staging, test.*, *, run, allow\n", "")
    )
    assert await reloader.check() == "refused"
    assert engine.policy is before
    ((kind, reason),) = await policy_events(engine)
    assert kind == "policy.refused"
    assert "1 policy test(s) fail" in reason
    assert "expected allow" in reason


async def test_a_kubernetes_style_symlink_swap_is_noticed(engine: Engine, tmp_path: Path) -> None:
    """Swapping a ..data symlink to a new directory, as a ConfigMap update does, reloads."""
    first, second = tmp_path / "v1", tmp_path / "v2"
    for version, rules in (
        (first, ENGINE_POLICY),
        (second, ENGINE_POLICY + "g, user:zoe, role:lead, *\n"),
    ):
        version.mkdir()
        (version / "model.conf").write_text((REPO / "policies" / "model.conf").read_text())
        (version / "policy.csv").write_text(rules)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "..data").symlink_to(first)
    for name in ("model.conf", "policy.csv"):
        (mounted / name).symlink_to(Path("..data") / name)
    reloader = reloader_for(engine, mounted)
    os.replace(_new_link(mounted, second), mounted / "..data")
    assert await reloader.check() == "reloaded"
    assert "role:lead" in engine.policy.roles_of("user:zoe", "prod")


def _new_link(mounted: Path, target: Path) -> Path:
    link = mounted / "..data_tmp"
    link.symlink_to(target)
    return link


async def test_the_watch_loop_stops_when_asked(engine: Engine, policy_dir: Path) -> None:
    """run() returns as soon as stop is set, whatever its interval."""
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(reloader_for(engine, policy_dir).run(stop, interval=3600), 5)
