"""Approvals under abuse: quorums, separation of duties, expiry, plan binding, races."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot import approvals
from bot.engine import Engine
from bot.errors import IllegalTransition, PolicyDenied
from bot.intent import understand
from bot.models import Approval, Plan, Request, RequestRecord
from bot.planning import Planner
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from connectors import Catalog
from tests.conftest import ENGINE_POLICY, EngineFactory
from tests.support.actions import ScriptedConnector
from tests.support.lam_process import run_lam
from tests.support.policies import REPO, write_policy

QUORUM_POLICY = ENGINE_POLICY + "q, prod, test.restart, *, 2\nprotect, prod\n"


@pytest.fixture
def quorum_engine(make_engine: EngineFactory, policy_dir: Path) -> Engine:
    (policy_dir / "policy.csv").write_text(QUORUM_POLICY)
    return make_engine()


def ask(text: str, requester: str = "user:alice") -> Request:
    return Request(text=text, requester=requester)


async def test_a_quorum_runs_only_on_the_last_distinct_approval(
    quorum_engine: Engine, connector: ScriptedConnector
) -> None:
    """With two approvals required, one approval waits, a repeat is refused, the second runs."""
    record = await quorum_engine.ask(ask("restart web in prod"))
    assert record.decisions[0].approvals_required == 2
    assert "q, prod, test.restart, *, 2" in record.decisions[0].rule

    waiting = await quorum_engine.approve(record.id, "user:bob")
    assert waiting.state == "awaiting_approval"
    with pytest.raises(IllegalTransition, match="already decided"):
        await quorum_engine.approve(record.id, "user:bob")
    assert connector.calls["test.restart"] == 0

    done = await quorum_engine.approve(record.id, "user:erin")
    assert done.state == "succeeded"
    assert connector.calls["test.restart"] == 1


async def test_one_rejection_rejects_a_quorum_request(quorum_engine: Engine) -> None:
    """A rejection after one approval still rejects the whole request."""
    record = await quorum_engine.ask(ask("restart web in prod"))
    await quorum_engine.approve(record.id, "user:bob")
    rejected = await quorum_engine.reject(record.id, "user:erin", "not during the sale")
    assert rejected.state == "rejected"


async def test_a_destructive_step_in_a_protected_environment_needs_approval(
    make_engine: EngineFactory, policy_dir: Path, connector: ScriptedConnector
) -> None:
    """A wildcard 'run' grant does not run a destructive step in prod; naming it does."""
    (policy_dir / "policy.csv").write_text(
        QUORUM_POLICY + "p, role:lead, prod, test.*, *, run, allow\n"
    )
    engine = make_engine()
    guarded = await engine.ask(ask("purge web in prod", requester="user:bob"))
    assert guarded.state == "awaiting_approval"
    assert "is destructive and 'prod' is protected" in guarded.decisions[0].rule
    assert connector.calls["test.purge"] == 0

    (policy_dir / "policy.csv").write_text(
        QUORUM_POLICY + "p, role:lead, prod, test.purge, web, run, allow\n"
    )
    engine.policy = Policy.load(policy_dir)
    named = await engine.ask(ask("purge web in prod", requester="user:bob"))
    assert named.state == "succeeded"


async def test_roles_and_groups_never_approve(engine: Engine) -> None:
    """Only people approve: a role subject is refused even where the role may approve."""
    record = await engine.ask(ask("restart web in prod"))
    with pytest.raises(PolicyDenied, match="not a person"):
        await engine.approve(record.id, "role:lead")


async def test_an_approver_whose_role_was_removed_cannot_approve(
    engine: Engine, policy_dir: Path
) -> None:
    """The approver is authorised at the moment of approval, not when the request was made."""
    record = await engine.ask(ask("restart web in prod"))
    (policy_dir / "policy.csv").write_text(ENGINE_POLICY.replace("g, user:bob, role:lead, *\n", ""))
    engine.policy = Policy.load(policy_dir)
    with pytest.raises(PolicyDenied, match="user:bob may not approve"):
        await engine.approve(record.id, "user:bob")


async def test_planner_is_offered_only_permitted_actions(
    make_engine: EngineFactory, connector: ScriptedConnector
) -> None:
    """The planner sees only what the requester may run or request, and suggestions too."""
    engine = make_engine()
    seen: list[list[str]] = []
    inner = engine.planner

    class Recording:
        name = "recording"

        async def plan(self, intent: object, catalog: Catalog) -> Plan:
            seen.append([action.id for action in catalog])
            return await inner.plan(intent, catalog)  # type: ignore[arg-type]

        async def aclose(self) -> None:
            await inner.aclose()

    recording: Planner = Recording()
    engine.planner = recording
    await engine.ask(ask("noop in prod", requester="user:dave"))
    assert seen == [[]]  # dave has no rights at all in prod

    await engine.ask(ask("noop in prod"))
    assert "test.purge" not in seen[-1]
    assert "test.restart" in seen[-1]

    unplanned = await engine.ask(ask("make coffee in prod", requester="user:dave"))
    assert unplanned.state == "unplanned"
    assert unplanned.suggestions == ()


async def test_a_forbidden_action_is_answered_with_the_rule_that_forbids_it(
    engine: Engine, connector: ScriptedConnector
) -> None:
    """A phrase matching only a forbidden action is denied by rule, not left unplanned."""
    record = await engine.ask(ask("purge web in prod"))
    assert record.state == "denied"
    assert "p, role:developer, prod, test.purge, *, *, deny" in (record.reason or "")
    assert connector.calls["test.purge"] == 0


# --- properties ----------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PEOPLE = st.sampled_from(["user:alice", "user:bob", "user:erin", "user:lead1", "user:dave"])


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    # Leads may ask too, so requesters and approvers overlap in every combination.
    rules = QUORUM_POLICY + "p, role:lead, prod, test.*, *, request, allow\n"
    return Policy.load(write_policy(tmp_path_factory.mktemp("policy"), rules))


async def awaiting(engine_policy: Policy, requester: str, ttl: timedelta) -> RequestRecord:
    """A request for a prod restart as the engine leaves it, awaiting approval."""
    intent = understand(
        Request(text="restart web in prod", requester=requester),
        environments=("dev", "staging", "prod"),
        default_environment="dev",
    )
    plan = await AliasPlanner().plan(intent, Catalog([ScriptedConnector()]))
    decisions = tuple(engine_policy.decide(requester, step) for step in plan.steps)
    return RequestRecord(
        request=Request(text="restart web in prod", requester=requester),
        state="awaiting_approval",
        intent=intent,
        plan=plan,
        decisions=decisions,
        expires_at=NOW + ttl,
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    requester=PEOPLE,
    approvers=st.lists(PEOPLE, max_size=6),
    ttl_minutes=st.integers(min_value=-5, max_value=5),
    foreign_hashes=st.lists(st.booleans(), max_size=6),
)
async def test_no_approval_sequence_breaks_the_rules(
    policy: Policy,
    requester: str,
    approvers: list[str],
    ttl_minutes: int,
    foreign_hashes: list[bool],
) -> None:
    """Self-approvals, expired approvals and other plans' approvals never count."""
    record = await awaiting(policy, requester, timedelta(minutes=ttl_minutes))
    assume(approvals.approvals_needed(record) > 0)  # only requests that can wait for approval
    # Approvals of another plan hash already on the record must never count.
    planted = tuple(
        Approval(approver=a, verdict="approved", plan_hash="0" * 64, rule="planted", at=NOW)
        for a, foreign in zip(approvers, foreign_hashes, strict=False)
        if foreign
    )
    record = record.model_copy(update={"approvals": planted})
    assert approvals.valid_approvals(record) == []
    for approver in approvers:
        before = record
        try:
            record, _ = approvals.decide(
                record, approver, policy, approve=True, reason=None, now=NOW
            )
        except (PolicyDenied, IllegalTransition):
            assert record is before
            continue
        assert ttl_minutes > 0, "an approval landed after the request expired"
        assert approver != requester, "the requester approved their own request"
    counted = approvals.valid_approvals(record)
    assert all(a.approver != requester for a in counted)
    assert all(a.plan_hash == record.plan.plan_hash for a in counted)  # type: ignore[union-attr]
    if record.state == "approved":
        assert len({a.approver for a in counted}) >= 2


# --- races across processes ----------------------------------------------------------------

APPROVE_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from bot.errors import LamError
from bot.wiring import open_engine
from bot.audit import Redactor
from bot.config import Settings
from bot.logs import configure_logging

async def main(request_id, approver):
    configure_logging(log_format="json", level="warning", redactor=Redactor())
    engine = await open_engine(Settings())
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        record = await engine.approve(request_id, approver)
        print(json.dumps({"state": record.state}))
    except LamError as error:
        print(json.dumps({"refused": str(error)}))
    finally:
        await engine.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_concurrent_approvals_from_several_processes_run_once(tmp_path: Path) -> None:
    """Eight processes approving one request at the same moment lead to one execution."""
    policies = write_policy(tmp_path / "policies", ENGINE_POLICY.replace("test.", "shell."))
    env = {
        "PATH": os.environ["PATH"],
        "LAM_HOME": str(tmp_path / "home"),
        "LAM_POLICY_DIR": str(policies),
    }
    asked = run_lam("ask", "run shell.uptime in prod", "--as", "alice", "--json", env=env)
    request_id = json.loads(asked.stdout)["id"]
    assert json.loads(asked.stdout)["state"] == "awaiting_approval", asked.stdout

    approvers = [f"user:lead{i}" for i in range(8)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", APPROVE_SCRIPT, request_id, approver],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for approver in approvers
    ]
    for process in processes:  # every process is open and waiting before any approves
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    outcomes = [json.loads(process.communicate(timeout=60)[0]) for process in processes]
    assert [o.get("state") for o in outcomes].count("succeeded") == 1, outcomes
    assert all("state" in o or "not awaiting approval" in o["refused"] for o in outcomes)

    tail = run_lam("audit", "tail", "-n", "100", env=env)
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.count("request.executing") == 1
    assert tail.stdout.count("step.started") == 1
    verified = run_lam("audit", "verify", env=env)
    assert verified.returncode == 0, verified.stderr
