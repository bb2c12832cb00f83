"""The engine end to end: intent, plan, policy, approvals, execution and audit together."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from bot.approvals import ApprovalExpired
from bot.engine import Engine
from bot.errors import IllegalTransition, InvalidInput, PolicyDenied, UnknownRequest
from bot.execution import ExecutionOptions
from bot.models import Request, RequestRecord, canonical_json, sha256_hex
from bot.policy import Policy
from tests.conftest import APPROVERS, ENGINE_POLICY, EngineFactory
from tests.support.actions import ScriptedConnector
from tests.support.audit_trail import events_of, kinds_of
from tests.support.policies import write_policy


def ask(text: str, requester: str = "user:alice", **fields: object) -> Request:
    return Request.model_validate({"text": text, "requester": requester, **fields})


def step_status(record: RequestRecord) -> list[str]:
    return [r.status for r in record.results]


async def test_allowed_request_runs_and_is_audited(
    engine: Engine, connector: ScriptedConnector
) -> None:
    """A request every step of which policy allows runs at once, and each transition is audited."""
    record = await engine.ask(ask("restart web in staging"))
    assert record.state == "succeeded"
    assert record.results[0].output == "restarted web in staging"
    assert connector.calls["test.restart"] == 1
    assert await kinds_of(engine, record.id) == [
        "request.received",
        "request.planned",
        "request.approved",
        "request.executing",
        "step.started",
        "step.finished",
        "request.succeeded",
    ]
    planned = (await events_of(engine, record.id))[1]
    assert planned.decisions[0].decision == "allow"
    assert "p, role:developer, staging, test.*, *, run, allow" in planned.decisions[0].rule
    assert await engine.verify_audit() == 7


async def test_request_needing_approval_waits_then_runs_once_approved(
    engine: Engine, connector: ScriptedConnector
) -> None:
    """A step that needs approval waits; the requester cannot approve; an approver can."""
    record = await engine.ask(ask("restart web in prod"))
    assert record.state == "awaiting_approval"
    assert record.decisions[0].approvers == ("role:lead",)
    assert connector.calls["test.restart"] == 0

    with pytest.raises(PolicyDenied, match="someone else must approve"):
        await engine.approve(record.id, "user:alice")
    with pytest.raises(PolicyDenied, match="user:dave may not approve 'test.restart'"):
        await engine.approve(record.id, "user:dave")

    approved = await engine.approve(record.id, "user:bob")
    assert approved.state == "succeeded"
    assert approved.approvals[0].plan_hash == approved.plan.plan_hash  # type: ignore[union-attr]
    assert connector.calls["test.restart"] == 1

    with pytest.raises(IllegalTransition, match="not awaiting approval"):
        await engine.approve(record.id, "user:erin")
    assert connector.calls["test.restart"] == 1
    assert await engine.verify_audit() > 0


async def test_denied_by_rule_runs_nothing(engine: Engine, connector: ScriptedConnector) -> None:
    """A deny rule wins over the request rule, names itself, and nothing runs."""
    record = await engine.ask(ask("purge web in prod"))
    assert record.state == "denied"
    assert "p, role:developer, prod, test.purge, *, *, deny" in (record.reason or "")
    assert connector.calls["test.purge"] == 0
    assert await kinds_of(engine, record.id) == [
        "request.received",
        "request.planned",
        "request.denied",
    ]


async def test_default_deny_for_unknown_subject(engine: Engine) -> None:
    """A subject no rule mentions is denied by default, and the reason says so."""
    record = await engine.ask(ask("noop in staging", requester="user:mallory"))
    assert record.state == "denied"
    assert "default deny" in (record.reason or "")


async def test_one_step_needing_approval_holds_the_whole_plan(
    engine: Engine, connector: ScriptedConnector
) -> None:
    """A plan with one allowed and one approval-needing step waits as a whole."""
    record = await engine.ask(ask("noop then restart web in prod"))
    assert record.state == "awaiting_approval"
    assert [d.decision for d in record.decisions] == ["allow", "needs_approval"]
    assert connector.calls["test.noop"] == 0


async def test_rejection_needs_a_reason_and_ends_the_request(
    engine: Engine, connector: ScriptedConnector
) -> None:
    """A rejection without a reason is refused; with one, the request ends rejected."""
    record = await engine.ask(ask("restart web in prod"))
    with pytest.raises(InvalidInput, match="needs a reason"):
        await engine.reject(record.id, "user:bob", "  ")
    rejected = await engine.reject(record.id, "user:bob", "deploy freeze")
    assert (rejected.state, rejected.reason) == ("rejected", "deploy freeze")
    with pytest.raises(IllegalTransition, match="rejected, not awaiting approval"):
        await engine.approve(record.id, "user:erin")
    assert connector.calls["test.restart"] == 0


async def test_cancel_by_requester_and_not_by_a_stranger(engine: Engine) -> None:
    """The requester may cancel a waiting request; someone unrelated may not."""
    record = await engine.ask(ask("restart web in prod"))
    with pytest.raises(PolicyDenied, match="only the requester or an approver"):
        await engine.cancel(record.id, "user:mallory")
    cancelled = await engine.cancel(record.id, "user:alice")
    assert cancelled.state == "cancelled"
    with pytest.raises(IllegalTransition):
        await engine.cancel(record.id, "user:alice")


async def test_expired_request_cannot_be_approved(
    make_engine: EngineFactory, connector: ScriptedConnector
) -> None:
    """Approving after the approval window fails clearly and the request ends expired."""
    engine = make_engine(approval_ttl=timedelta(0))
    record = await engine.ask(ask("restart web in prod"))
    with pytest.raises(IllegalTransition, match="expired"):
        await engine.approve(record.id, "user:bob")
    assert (await engine.show(record.id)).state == "expired"
    assert "request.expired" in await kinds_of(engine, record.id)
    assert connector.calls["test.restart"] == 0


async def test_expiry_is_reported_when_checked_at_the_moment_of_approval(
    engine: Engine,
) -> None:
    """An approval evaluated after the deadline raises ApprovalExpired."""
    from bot import approvals

    record = await engine.ask(ask("restart web in prod"))
    assert record.expires_at is not None
    with pytest.raises(ApprovalExpired):
        approvals.decide(
            record,
            "user:bob",
            engine.policy,
            approve=True,
            reason=None,
            now=record.expires_at + timedelta(seconds=1),
        )


async def test_retryable_errors_are_retried_with_backoff(engine: Engine) -> None:
    """A step failing with a retryable error succeeds on a later attempt within the bound."""
    record = await engine.ask(ask("run test.flaky failures=2 in staging"))
    assert record.state == "succeeded"
    assert record.results[0].attempts == 3


async def test_retries_are_bounded(engine: Engine, connector: ScriptedConnector) -> None:
    """A step that keeps failing retryably gives up after max_attempts and says so."""
    record = await engine.ask(ask("run test.flaky failures=9 in staging"))
    assert record.state == "failed"
    assert connector.calls["test.flaky"] == 3
    assert "gave up after 3 attempts" in (record.results[0].error or "")


async def test_hard_failure_stops_the_run_and_names_the_step(
    engine: Engine, connector: ScriptedConnector
) -> None:
    """The first hard failure stops the run; later steps are skipped; the reason names it."""
    record = await engine.ask(ask("break then noop in staging"))
    assert record.state == "failed"
    assert step_status(record) == ["failed", "skipped"]
    assert record.reason == "step s1 (test.fail) failed: the service refused: 503 maintenance"
    assert connector.calls["test.fail"] == 1
    assert connector.calls["test.noop"] == 0


async def test_a_hanging_action_times_out(engine: Engine) -> None:
    """An action that never returns is stopped at its timeout and the step fails."""
    record = await engine.ask(ask("hang in staging"))
    assert record.state == "failed"
    assert record.results[0].error == "timed out after 0.2s"


async def test_a_crashing_connector_fails_the_step_not_the_engine(engine: Engine) -> None:
    """A connector bug becomes a failed step with the exception named."""
    record = await engine.ask(ask("run test.crash in staging"))
    assert record.state == "failed"
    assert "ZeroDivisionError: division by zero" in (record.results[0].error or "")


async def test_output_is_capped_and_marked(engine: Engine) -> None:
    """Output past 64 KiB is cut on a character boundary and marked truncated."""
    record = await engine.ask(ask("run test.output size=200000 in staging"))
    result = record.results[0]
    assert result.truncated
    kept = result.output.split("\n[output truncated")[0]
    assert len(kept.encode()) <= 64 * 1024
    assert "[output truncated: kept the first 65536 bytes]" in result.output


async def test_dry_run_uses_the_dry_run_path_or_refuses(
    engine: Engine, connector: ScriptedConnector
) -> None:
    """Dry-run calls an action's dry-run path, and refuses an action without one."""
    echoed = await engine.ask(ask("dry run echo hello in staging"))
    assert echoed.results[0].output == "would echo: hello"
    refused = await engine.ask(ask("noop in staging", dry_run=True))
    assert refused.state == "failed"
    assert "has no dry-run mode; nothing was run" in (refused.results[0].error or "")
    assert connector.calls["test.noop"] == 0


async def test_policy_is_checked_again_right_before_a_step_runs(
    engine: Engine, connector: ScriptedConnector, tmp_path: Path
) -> None:
    """A role revoked between approval and execution stops the step, audited."""
    record = await engine.ask(ask("restart web in prod"))
    revoked = ENGINE_POLICY.replace("p, role:developer, prod, test.*, *, request, allow\n", "")
    engine.policy = Policy.load(write_policy(tmp_path / "revoked", revoked))
    # Approval itself is re-authorised too, so approve with the old policy's power by
    # recording the approval first, then run under the new policy.
    from bot import approvals

    stored = await engine.store.get(record.id)
    old = Policy.load(tmp_path / "policies")
    approved, events = approvals.decide(
        stored, "user:bob", old, approve=True, reason=None, now=stored.updated_at
    )
    await engine.store.save(approved, stored.version, events)
    finished = await engine.execute(record.id)
    assert finished.state == "failed"
    assert "policy no longer allows this step" in (finished.results[0].error or "")
    assert connector.calls["test.restart"] == 0


async def test_unplannable_request_is_recorded_with_suggestions(engine: Engine) -> None:
    """A request no action matches ends unplanned with the closest actions, audited."""
    record = await engine.ask(ask("reboot the mainframe"))
    assert record.state == "unplanned"
    assert record.suggestions
    assert "nothing was run" in (record.reason or "")
    assert await kinds_of(engine, record.id) == ["request.received", "request.unplanned"]


async def test_invalid_text_is_refused_and_recorded(engine: Engine) -> None:
    """A request with a hidden bidi override is refused before planning, and recorded."""
    record = await engine.ask(ask("restart \u202eweb in prod"))
    assert record.state == "unplanned"
    assert "RIGHT-TO-LEFT OVERRIDE" in (record.reason or "")


async def test_unknown_request_id_is_reported(engine: Engine) -> None:
    """Approving or showing an id that does not exist names the id."""
    with pytest.raises(UnknownRequest, match="no request with id 'nope'"):
        await engine.approve("nope", "user:bob")


async def test_concurrent_approvals_execute_exactly_once(
    engine: Engine, connector: ScriptedConnector
) -> None:
    """Fifty approvers clicking at once lead to exactly one execution."""
    record = await engine.ask(ask("restart web in prod"))

    async def click(approver: str) -> str:
        try:
            return (await engine.approve(record.id, approver)).state
        except IllegalTransition:
            return "refused"

    outcomes = await asyncio.gather(*(click(a) for a in APPROVERS))
    assert outcomes.count("succeeded") == 1
    assert outcomes.count("refused") == len(APPROVERS) - 1
    assert connector.calls["test.restart"] == 1
    assert (await kinds_of(engine, record.id)).count("request.executing") == 1
    await engine.verify_audit()


async def test_redelivered_execution_skips_finished_steps_and_flags_interrupted(
    engine: Engine, connector: ScriptedConnector
) -> None:
    """A step recorded as finished is not re-run; one left running is reported interrupted."""
    record = await engine.ask(ask("noop then restart web then echo hi in prod"))
    record = await engine.approve(record.id, "user:bob")
    assert record.state == "succeeded"
    assert connector.calls == {"test.noop": 1, "test.restart": 1, "test.echo": 1}

    # Rebuild the state a worker that died during step s2 would have left behind.
    interrupted = record.model_copy(
        update={
            "state": "executing",
            "results": (
                record.results[0],
                record.results[1].model_copy(update={"status": "running"}),
            ),
        }
    )
    fresh = await engine.ask(ask("noop then restart web then echo hi in prod"))
    fresh = await engine.store.save(
        interrupted.model_copy(update={"request": fresh.request}), fresh.version, []
    )
    rerun = await engine.execute(fresh.id)
    assert step_status(rerun) == ["succeeded", "interrupted", "skipped"]
    assert rerun.state == "failed"
    assert "outcome is unknown" in (rerun.reason or "")
    assert connector.calls == {"test.noop": 1, "test.restart": 1, "test.echo": 1}


async def test_secrets_are_redacted_before_anything_is_stored(
    make_engine: EngineFactory,
) -> None:
    """A configured secret typed into a request never reaches the store or the audit trail."""
    engine = make_engine(secrets=("hunter2-canary-secret",))
    record = await engine.ask(ask("echo hunter2-canary-secret in staging"))
    stored = await engine.store.get(record.id)
    assert "hunter2-canary-secret" not in stored.model_dump_json()
    assert all(
        "hunter2-canary-secret" not in e.model_dump_json()
        for e in await events_of(engine, record.id)
    )


async def test_execution_options_bound_output(make_engine: EngineFactory) -> None:
    """A smaller configured output cap is honoured."""
    engine = make_engine(execution=ExecutionOptions(output_limit=10, backoff_base=0.001))
    record = await engine.ask(ask("echo 0123456789abcdef in staging"))
    assert record.results[0].output.startswith("0123456789\n[output truncated")


async def test_a_step_can_use_an_earlier_steps_output(engine: Engine) -> None:
    """${s1.output} in an argument is replaced by step s1's output before s2 runs."""
    record = await engine.ask(
        ask("run test.echo text=web then run test.restart service=${s1.output} in staging")
    )
    assert record.state == "succeeded", record.reason
    assert record.results[1].output == "restarted web in staging"


async def test_a_resolved_argument_is_validated_and_authorised_again(
    engine: Engine, connector: ScriptedConnector
) -> None:
    """A value from an earlier step that fails validation stops the step; nothing runs."""
    record = await engine.ask(
        ask("run test.echo text='Web Server' then run test.restart service=${s1.output} in staging")
    )
    assert record.state == "failed"
    assert "service: String should match pattern" in (record.results[1].error or "")
    assert connector.calls["test.restart"] == 0


async def test_records_stored_before_clarification_and_revision_load_unchanged(
    engine: Engine,
) -> None:
    """A record without the newer fields loads with their defaults, and its plan hash holds."""
    record = await engine.ask(ask("restart web in prod"))
    assert record.plan is not None
    stored = record.model_dump(mode="json")
    for newer in ("question", "conversation", "revisions", "previous", "awaiting_since"):
        del stored[newer]
    del stored["plan"]["revision"]
    del stored["intent"]["conversation"]
    old = RequestRecord.model_validate(stored)
    assert (old.question, old.conversation, old.revisions, old.previous) == (None, (), 0, ())
    assert old.plan is not None
    assert old.plan.plan_hash == sha256_hex(canonical_json(stored["plan"]))
    assert old.plan.plan_hash == record.plan.plan_hash


async def test_awaiting_since_marks_the_wait_for_approval_only(engine: Engine) -> None:
    """The wait for approval starts when the plan needs it and is cleared when it ends."""
    record = await engine.ask(ask("restart web in prod"))
    assert record.state == "awaiting_approval"
    assert record.awaiting_since is not None
    assert record.request.received_at <= record.awaiting_since <= record.updated_at
    one = await engine.approve(record.id, "user:bob")
    assert (one.state, one.awaiting_since) == ("succeeded", None)
    allowed = await engine.ask(ask("restart web in staging"))
    assert allowed.awaiting_since is None
