"""Action execution, observation and feedback: running an approved plan step by step.

Governance wraps every step here, in one place: right before a step runs, policy is
asked again (a role revoked after approval stops the step). Each step records that it
started before it runs and its result after, so a redelivered run never repeats a
finished step, and a step found ``running`` had an unknown outcome.

A run that stops at a failed step hands the failure back rather than ending the request:
the engine may have the plan revised (``StepFailure.revisable``) before it fails it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from pydantic import JsonValue

from bot.errors import ActionFailed, InvalidArguments, UnknownAction
from bot.models import (
    FINISHED_STEP_STATUSES,
    EventKind,
    RequestRecord,
    State,
    Step,
    StepResult,
    StepStatus,
    canonical_json,
    utcnow,
)
from bot.planning.references import InvalidReference, resolve_references
from connectors import ActionContext, Catalog

TRUNCATION_MARK = "\n[output truncated: kept the first {limit} bytes]"

log = structlog.get_logger("lam.execution")


@dataclass(frozen=True)
class ExecutionOptions:
    max_attempts: int = 3
    """Attempts per step for errors a connector marks retryable."""
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    output_limit: int = 64 * 1024
    """Bytes of output kept per step; the rest is dropped and the result marked."""


class CommitFn(Protocol):
    """One transition, stored atomically with its audit event; returns the stored record."""

    async def __call__(
        self,
        record: RequestRecord,
        state: State,
        kind: EventKind,
        *,
        step: StepResult | None = None,
        reason: str | None = None,
        **changes: Any,
    ) -> RequestRecord: ...


Guard = Callable[[RequestRecord, Step], str | None]
"""Asked right before a step runs; a returned reason stops the step (and the run)."""


@dataclass(frozen=True)
class StepFailure:
    """Why a run stopped at a step."""

    reason: str
    """One line for the person: ``step s2 (svc.restart) failed: ...``."""
    result: StepResult
    """The stopped step's result, with its error and any output."""
    revisable: bool
    """The step itself failed (it ran and erred, or its arguments did not resolve), so a
    revised plan may work around it. ``False`` when policy or LAM stopped it (a revoked
    permission, no dry-run mode), when its outcome is unknown, or when it failed in an
    earlier delivery of the run: re-planning must never route around governance."""


async def execute(
    record: RequestRecord,
    *,
    catalog: Catalog,
    guard: Guard,
    commit: CommitFn,
    options: ExecutionOptions,
) -> tuple[RequestRecord, StepFailure | None]:
    """Run the steps of an ``executing`` request that have not finished.

    Stops at the first step that fails; the steps after it are marked skipped. Returns
    the request, still ``executing``, and the failure if a step failed: the caller ends
    the request, or revises its plan first.
    """
    assert record.plan is not None and record.state == "executing"
    failure: StepFailure | None = None
    for step in record.plan.steps:
        previous = record.result_of(step.id)
        if previous is not None and previous.status in FINISHED_STEP_STATUSES:
            if previous.status != "succeeded" and failure is None:
                reason = f"step {step.id} ({step.action}) {previous.status}"
                failure = StepFailure(reason, previous, revisable=False)
            continue
        if failure is not None:
            record = await _finish(
                record, step, commit, "skipped", error=f"not run: {failure.reason}"
            )
            continue
        if previous is not None and previous.status == "running":
            # The worker running it stopped before recording how it ended; running it
            # again is safe only for actions that say so.
            action = catalog.get(step.action) if step.action in catalog else None
            if action is None or not action.idempotent:
                reason = f"step {step.id} ({step.action}) was interrupted; its outcome is unknown"
                record = await _finish(
                    record, step, commit, "interrupted", error=reason, attempts=previous.attempts
                )
                failure = StepFailure(reason, _result(record, step), revisable=False)
                continue
        record, failure = await _run_step(record, step, catalog, guard, commit, options)
    return record, failure


async def _run_step(
    record: RequestRecord,
    step: Step,
    catalog: Catalog,
    guard: Guard,
    commit: CommitFn,
    options: ExecutionOptions,
) -> tuple[RequestRecord, StepFailure | None]:
    dry_run = record.plan is not None and record.plan.dry_run
    try:
        action = catalog.get(step.action)
        args = resolve_references(step, {r.step_id: r for r in record.results})
        params = catalog.validate(step.action, args)
    except (UnknownAction, InvalidArguments, InvalidReference) as error:
        record = await _finish(record, step, commit, "failed", error=str(error))
        return record, _failure(record, step, revisable=True)
    # Values taken from earlier steps' output are tool data: policy checks the step as
    # it will really run, resolved resource included.
    step = step.model_copy(
        update={"args": params.model_dump(mode="json"), "resource": action.resource(params)}
    )
    refusal = guard(record, step)
    if refusal is None and dry_run and not action.supports_dry_run:
        refusal = f"{step.action!r} has no dry-run mode; nothing was run"
    if refusal is not None:
        record = await _finish(record, step, commit, "failed", error=refusal)
        return record, _failure(record, step, revisable=False)

    started = StepResult(
        step_id=step.id,
        action=step.action,
        status="running",
        dry_run=dry_run,
        started_at=utcnow(),
    )
    record = await _record(record, started, commit, "step.started")
    context = ActionContext(
        request_id=record.id,
        step_id=step.id,
        environment=step.environment,
        dry_run=dry_run,
        idempotency_key=f"{record.id}:{record.plan.plan_hash if record.plan else ''}:{step.id}",
        timeout=action.timeout,
    )
    bound = log.bind(request_id=record.id, step=step.id, action=step.action)
    attempts = 0
    while True:
        attempts += 1
        try:
            async with asyncio.timeout(action.timeout):
                outcome = await action.run(params, context)
        except TimeoutError:
            problem, retryable = f"timed out after {action.timeout:g}s", False
        except ActionFailed as failed:
            problem, retryable = str(failed), failed.retryable
        except Exception as crash:  # a connector bug becomes a failed step, not a crash
            bound.exception("step.crashed")
            problem, retryable = f"{step.action} crashed: {type(crash).__name__}: {crash}", False
        else:
            output, truncated = cap_output(outcome.output, options.output_limit)
            finished = started.model_copy(
                update={
                    "status": "succeeded",
                    "attempts": attempts,
                    "output": output,
                    "data": _capped_data(outcome.data, options.output_limit),
                    "truncated": truncated,
                    "sandboxed": outcome.sandboxed,
                    "finished_at": utcnow(),
                }
            )
            record = await _record(record, finished, commit, "step.finished")
            return record, None
        if retryable and attempts < options.max_attempts:
            delay = backoff_delay(attempts, options)
            bound.warning("step.retrying", attempt=attempts, error=problem, delay=round(delay, 3))
            await asyncio.sleep(delay)
            continue
        if retryable:
            problem = f"{problem} (gave up after {attempts} attempts)"
        failed_result = started.model_copy(
            update={
                "status": "failed",
                "attempts": attempts,
                "error": problem,
                "finished_at": utcnow(),
            }
        )
        record = await _record(record, failed_result, commit, "step.finished")
        return record, _failure(record, step, revisable=True)


def _capped_data(data: JsonValue, limit: int) -> JsonValue:
    """Structured output kept only while its JSON fits the output cap."""
    if data is None or len(canonical_json(data).encode("utf-8")) <= limit:
        return data
    return None


def backoff_delay(attempt: int, options: ExecutionOptions) -> float:
    """Exponential backoff with full jitter, so retrying workers do not move in step."""
    ceiling = min(options.backoff_max, options.backoff_base * 2 ** (attempt - 1))
    return random.uniform(0, ceiling)  # noqa: S311 -- jitter, not cryptography


def cap_output(output: str, limit: int) -> tuple[str, bool]:
    """At most ``limit`` bytes of ``output`` (cut on a character boundary), and a mark."""
    encoded = output.encode("utf-8")
    if len(encoded) <= limit:
        return output, False
    kept = encoded[:limit].decode("utf-8", errors="ignore")
    return kept + TRUNCATION_MARK.format(limit=limit), True


async def _finish(
    record: RequestRecord,
    step: Step,
    commit: CommitFn,
    status: StepStatus,
    *,
    error: str,
    attempts: int = 0,
) -> RequestRecord:
    result = StepResult(
        step_id=step.id,
        action=step.action,
        status=status,
        attempts=attempts,
        error=error,
        finished_at=utcnow(),
    )
    return await _record(record, result, commit, "step.finished")


async def _record(
    record: RequestRecord, result: StepResult, commit: CommitFn, kind: EventKind
) -> RequestRecord:
    results = (*(r for r in record.results if r.step_id != result.step_id), result)
    return await commit(record, "executing", kind, step=result, results=results)


def _result(record: RequestRecord, step: Step) -> StepResult:
    result = record.result_of(step.id)
    assert result is not None
    return result


def _failure(record: RequestRecord, step: Step, *, revisable: bool) -> StepFailure:
    result = _result(record, step)
    reason = f"step {step.id} ({step.action}) failed: {result.error}"
    return StepFailure(reason, result, revisable=revisable)
