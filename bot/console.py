"""The terminal front: renders requests for people and for scripts, and runs ``lam chat``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import TextIO

from pydantic import JsonValue

from bot.approvals import approvals_needed, valid_approvals
from bot.engine import Engine
from bot.errors import LamError
from bot.lifecycle import DESCRIPTIONS
from bot.models import (
    TERMINAL_STATES,
    AuditEvent,
    Decision,
    Plan,
    Request,
    RequestRecord,
    Step,
    StepResult,
)
from bot.text import as_subject
from connectors import Catalog

EXIT_CODES = {
    "succeeded": 0,
    "awaiting_approval": 0,
    "clarifying": 0,
    "approved": 0,
    "executing": 0,
    "cancelled": 0,
    "failed": 1,
    "unplanned": 2,
    "denied": 3,
    "rejected": 3,
    "expired": 3,
}


def exit_code(record: RequestRecord) -> int:
    return EXIT_CODES.get(record.state, 0)


def as_json(record: RequestRecord) -> dict[str, JsonValue]:
    """The machine-readable form of a request, as ``--json`` prints it."""
    return {
        "id": record.id,
        "state": record.state,
        "text": record.request.text,
        "requester": record.request.requester,
        "environment": record.intent.environment if record.intent else None,
        "dry_run": record.plan.dry_run if record.plan else record.request.dry_run,
        "plan_hash": record.plan.plan_hash if record.plan else None,
        "reason": record.reason,
        "suggestions": list(record.suggestions),
        "question": record.question,
        "conversation": [
            {"question": turn.question, "answer": turn.answer} for turn in record.conversation
        ],
        "steps": _steps_json(record.plan, record.decisions, record.results),
        "approvals": [a.model_dump(mode="json") for a in record.approvals],
        "approvals_needed": approvals_needed(record),
        "revisions": record.revisions,
        "previous": [
            {
                "plan_hash": attempt.plan.plan_hash,
                "failure": attempt.failure,
                "steps": _steps_json(attempt.plan, attempt.decisions, attempt.results),
                "approvals": [a.model_dump(mode="json") for a in attempt.approvals],
            }
            for attempt in record.previous
        ],
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "received_at": record.request.received_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
    }


def _steps_json(
    plan: Plan | None, decisions: Iterable[Decision], results: Iterable[StepResult]
) -> list[JsonValue]:
    by_step = {d.step_id: d for d in decisions}
    result_of = {r.step_id: r for r in results}
    steps: list[JsonValue] = []
    for step in plan.steps if plan else ():
        decision = by_step.get(step.id)
        result = result_of.get(step.id)
        steps.append(
            {
                "id": step.id,
                "action": step.action,
                "args": step.args,
                "environment": step.environment,
                "resource": step.resource,
                "risk": step.risk,
                "depends_on": list(step.depends_on),
                "decision": decision.decision if decision else None,
                "rule": decision.rule if decision else None,
                "status": result.status if result else "pending",
                "attempts": result.attempts if result else 0,
                "output": result.output if result else "",
                "truncated": result.truncated if result else False,
                "error": result.error if result else None,
                "sandboxed": result.sandboxed if result else None,
            }
        )
    return steps


def dumps(value: JsonValue) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def render(record: RequestRecord) -> str:
    """A request as a person reads it in a terminal."""
    lines = [f"Request {record.id}: {DESCRIPTIONS[record.state]}"]
    where = f" in {record.intent.environment}" if record.intent else ""
    lines.append(f"  {record.request.requester} asked{where}: {record.request.text!r}")
    if record.plan is not None and record.plan.dry_run:
        lines.append("  dry run: actions report what they would do and change nothing")
    for turn in record.conversation:
        lines.append(f"  LAM asked: {turn.question}")
        lines.append(f"  answered: {turn.answer}")
    if record.state == "clarifying" and record.question:
        deadline = f" by {record.expires_at:%Y-%m-%d %H:%M} UTC" if record.expires_at else ""
        lines.append(f"  LAM asks: {record.question}")
        lines.append(f"  answer{deadline}: lam answer {record.id} '<your answer>' --as <you>")
    for number, attempt in enumerate(record.previous, start=1):
        lines.append(f"  plan {number} (revised after it failed: {attempt.failure}):")
        for step in attempt.plan.steps:
            result = next((r for r in attempt.results if r.step_id == step.id), None)
            lines.append(f"    {step.id}  {step.action}  {result.status if result else 'not run'}")
    if record.previous:
        lines.append(f"  plan {len(record.previous) + 1}:")
    decisions = {d.step_id: d for d in record.decisions}
    not_run = "not run" if record.state in TERMINAL_STATES else "pending"
    for step in record.plan.steps if record.plan else ():
        lines.extend(_render_step(step, decisions.get(step.id), record.result_of(step.id), not_run))
    if record.state == "awaiting_approval":
        have, need = len(valid_approvals(record)), approvals_needed(record)
        approvers = sorted({a for d in record.decisions for a in d.approvers})
        deadline = f" by {record.expires_at:%Y-%m-%d %H:%M} UTC" if record.expires_at else ""
        lines.append(
            f"  needs {need - have} more approval(s){deadline} from"
            f" {', '.join(approvers) or 'nobody (no rule lets anyone approve)'}:"
        )
        lines.append(f"    lam approve {record.id} --as <approver>")
    for approval in record.approvals:
        why = f": {approval.reason}" if approval.reason else ""
        lines.append(f"  {approval.verdict} by {approval.approver}{why}")
    if record.reason and record.state not in ("succeeded", "rejected", "cancelled"):
        lines.append(f"  reason: {record.reason}")
    if record.suggestions:
        lines.append("  closest actions:")
        lines.extend(f"    {suggestion}" for suggestion in record.suggestions)
    return "\n".join(lines)


def _render_step(
    step: Step, decision: Decision | None, result: StepResult | None, not_run: str
) -> list[str]:
    args = " ".join(f"{key}={value}" for key, value in step.args.items() if value is not None)
    verdict = decision.decision.replace("_", " ") if decision else "undecided"
    status = result.status if result else not_run
    lines = [f"  {step.id}  {step.action} {args}".rstrip()]
    lines.append(f"      risk {step.risk}, {verdict}, {status}")
    if decision is not None:
        lines.append(f"      rule: {decision.rule}")
    if result is not None:
        if result.sandboxed is not None:
            lines.append(f"      sandboxed: {'yes' if result.sandboxed else 'no'}")
        if result.attempts > 1:
            lines.append(f"      attempts: {result.attempts}")
        if result.error:
            lines.append(f"      error: {result.error}")
        if result.output:
            lines.extend(f"      | {line}" for line in result.output.rstrip("\n").splitlines())
    return lines


def render_history(records: Iterable[RequestRecord]) -> str:
    rows = [
        f"{r.id}  {r.request.received_at:%Y-%m-%d %H:%M}  {r.state:<17} {r.request.requester:<16}"
        f" {r.request.text[:60]!r}"
        for r in records
    ]
    return "\n".join(rows) if rows else "no requests yet"


def render_actions(catalog: Catalog) -> str:
    """Every action with its risk and arguments; connectors that failed to start, why."""
    lines = [f"unavailable: {reason}" for _, reason in sorted(catalog.failures.items())]
    for action in catalog:
        dry = ", dry-run" if action.supports_dry_run else ""
        lines.append(f"{action.id}  ({action.risk}{dry})  {action.description}")
        lines.extend(f"    e.g. {example!r}" for example in action.examples[:3])
        fields = action.params.model_json_schema().get("properties", {})
        if fields:
            lines.append(f"    args: {', '.join(fields)}")
    return "\n".join(lines)


def render_event(event: AuditEvent) -> str:
    extra = ""
    if event.step is not None:
        extra = f" step={event.step.step_id} status={event.step.status}"
    if event.reason:
        extra += f" reason={event.reason!r}"
    return (
        f"{event.seq:>6} {event.at:%Y-%m-%d %H:%M:%S} {event.kind:<26}"
        f" {event.request_id or '-':<12} actor={event.actor} state={event.state or '-'}{extra}"
    )


CHAT_HELP = """\
Type a request, e.g. 'disk usage in staging' or 'run shell.uptime'. When LAM asks a
question about your request, the next line you type answers it. Commands:
  /answer ID TEXT                 answer LAM's question about request ID
  /ask TEXT                       a new request, even while LAM waits for an answer
  /approve ID as USER             approve a request as another user
  /reject ID as USER because WHY  reject it, with a reason
  /cancel ID                      cancel your request while it waits
  /show ID                        show a request
  /history                        your recent requests
  /actions                        what LAM can do
  /help, /quit"""


async def chat(engine: Engine, requester: str, read: Callable[[str], str], out: TextIO) -> None:
    """A read-eval-print loop over the engine; ``read`` raises EOFError to end it.

    While a request of the requester waits for an answer, a line that is not a command
    answers it: the conversation continues the same request. ``read`` blocks, so it runs
    in a thread: the event loop stays free for background work such as reloading policy.
    """
    print(f"LAM console as {requester}. /help for commands.", file=out)
    # The request whose question the next plain line answers.
    waiting: str | None = None
    while True:
        try:
            line = (await asyncio.to_thread(read, "answer> " if waiting else "lam> ")).strip()
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        try:
            text, record = await _chat_line(engine, requester, line, waiting)
        except LamError as error:
            print(f"error: {error}", file=out)
            if waiting is not None and (await engine.show(waiting)).state != "clarifying":
                waiting = None
            continue
        print(text, file=out)
        if record is None:
            continue
        if record.state == "clarifying" and record.request.requester == requester:
            waiting = record.id
            print(f"Your next line answers this; /cancel {record.id} drops the request.", file=out)
        elif record.id == waiting:
            waiting = None


async def _chat_line(
    engine: Engine, requester: str, line: str, waiting: str | None
) -> tuple[str, RequestRecord | None]:
    """What to print for one line, and the request it changed or showed (if any)."""
    if not line.startswith("/"):
        if waiting is not None:
            return _shown(await engine.answer(waiting, requester, line))
        return _shown(await engine.ask(Request(text=line, requester=requester)))
    command, _, rest = line[1:].partition(" ")
    rest = rest.strip()
    if command == "help":
        return CHAT_HELP, None
    if command == "actions":
        return render_actions(engine.catalog), None
    if command == "history":
        return render_history(await engine.history(requester=requester)), None
    if command == "ask" and rest:
        return _shown(await engine.ask(Request(text=rest, requester=requester)))
    if command == "answer":
        request_id, _, answer = rest.partition(" ")
        if request_id and answer.strip():
            return _shown(await engine.answer(request_id, requester, answer.strip()))
    if command == "show" and rest:
        return _shown(await engine.show(rest))
    if command == "cancel" and rest:
        return _shown(await engine.cancel(rest, requester))
    if command == "approve":
        request_id, _, who = rest.partition(" as ")
        if request_id and who:
            return _shown(await engine.approve(request_id.strip(), as_subject(who.strip())))
    if command == "reject":
        head, _, reason = rest.partition(" because ")
        request_id, _, who = head.partition(" as ")
        if request_id and who and reason:
            return _shown(
                await engine.reject(request_id.strip(), as_subject(who.strip()), reason.strip())
            )
    return f"unknown or incomplete command {line!r}\n{CHAT_HELP}", None


def _shown(record: RequestRecord) -> tuple[str, RequestRecord]:
    return render(record), record
