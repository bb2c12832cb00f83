"""Clarification: the planner's question to the requester, and their answer.

When the model cannot plan without knowing more, the request waits in ``clarifying``
with the question. The requester's answer, and only theirs, sends the same request back
to planning with every answer so far, which the model sees as data. A request asks at
most a bounded number of questions and waits for an answer as long as for an approval.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from bot.errors import IllegalTransition, InvalidInput, PolicyDenied
from bot.intent import understand
from bot.lifecycle import DESCRIPTIONS, advance
from bot.models import AuditEvent, Intent, Request, RequestRecord, Turn
from bot.text import normalise

SYSTEM_ACTOR = "lam"


def ask(
    record: RequestRecord,
    intent: Intent,
    question: str,
    *,
    limit: int,
    expires_at: datetime,
    tokens: int | None = None,
) -> tuple[RequestRecord, AuditEvent]:
    """A ``received`` request waiting for the answer to ``question``.

    Once ``limit`` questions have been answered, another question ends the request as
    ``unplanned`` instead: a model that keeps asking is not converging.
    """
    asked = len(record.conversation)
    if asked >= limit:
        if asked:
            reason = (
                f"LAM still needs to know more after {asked} answer(s), the most one request"
                f" may have: {question}; nothing was run. Ask again with every detail in one"
                " message"
            )
        else:
            reason = f"LAM needs to know more before planning: {question}"
        return advance(
            record, "unplanned", "request.unplanned", SYSTEM_ACTOR, reason=reason, tokens=tokens
        )
    return advance(
        record,
        "clarifying",
        "request.clarifying",
        SYSTEM_ACTOR,
        note=question,
        tokens=tokens,
        intent=intent,
        question=question,
        expires_at=expires_at,
    )


def answer(
    record: RequestRecord,
    answerer: str,
    text: str,
    *,
    environments: Sequence[str],
    now: datetime,
) -> tuple[RequestRecord, AuditEvent]:
    """The request ``received`` again with the answer added to its conversation.

    Raises, changing nothing, when ``answerer`` did not ask for the request, the request
    is not waiting for an answer, the wait is over, or the answer is empty, malformed or
    names an environment other than the one the request is for. The record's intent
    carries the conversation (and an environment or dry-run the answer adds) for planning.
    """
    requester = record.request.requester
    if answerer != requester:
        raise PolicyDenied(
            f"only {requester}, who asked for request {record.id}, may answer its question;"
            " nothing changed"
        )
    if record.state != "clarifying" or record.question is None or record.intent is None:
        # "expired without approval" would misreport a question that was never answered.
        state = DESCRIPTIONS[record.state]
        if record.state == "expired" and record.reason:
            state = f"expired ({record.reason})"
        raise IllegalTransition(
            f"request {record.id} is {state}, not waiting for an answer; nothing changed"
        )
    if record.expires_at is not None and now >= record.expires_at:
        raise IllegalTransition(
            f"the question of request {record.id} expired at"
            f" {record.expires_at:%Y-%m-%d %H:%M:%S} UTC; ask again"
        )
    reply = normalise(text, what="the answer")
    if not reply:
        raise InvalidInput(f"the answer is empty; LAM asked: {record.question}")
    intent = _with_answer(record, record.intent, reply, environments)
    # Nothing else changes a clarifying request, so its last update is when it asked.
    turn = Turn(question=record.question, answer=reply, asked_at=record.updated_at, answered_at=now)
    conversation = (*record.conversation, turn)
    return advance(
        record,
        "received",
        "request.answered",
        answerer,
        note=reply,
        intent=intent.model_copy(update={"conversation": conversation}),
        conversation=conversation,
        expires_at=None,
    )


def expire_if_due(record: RequestRecord, now: datetime) -> tuple[RequestRecord, AuditEvent] | None:
    """The transition to ``expired`` when a question has waited too long, else ``None``."""
    if record.state != "clarifying" or record.expires_at is None or now < record.expires_at:
        return None
    return advance(
        record,
        "expired",
        "request.expired",
        SYSTEM_ACTOR,
        reason=f"no answer before {record.expires_at:%Y-%m-%d %H:%M:%S} UTC",
    )


def _with_answer(
    record: RequestRecord, intent: Intent, reply: str, environments: Sequence[str]
) -> Intent:
    """``intent`` with what the answer's own words fix: an environment, dry-run.

    The answer is the requester's words about the same request, so it may name the
    environment the request left open; it may not move a request to another one.
    """
    try:
        said = understand(
            Request(text=reply, requester=record.request.requester),
            environments=environments,
            default_environment=intent.environment,
        )
    except InvalidInput as error:
        raise InvalidInput(f"the answer to request {record.id} was refused: {error}") from None
    changes: dict[str, object] = {"dry_run": intent.dry_run or said.dry_run}
    if said.environment_source == "text" and said.environment != intent.environment:
        if intent.environment_source != "default":
            raise InvalidInput(
                f"the answer names environment {said.environment!r}, but request {record.id}"
                f" is for {intent.environment!r}; answer for {intent.environment!r}, or cancel"
                f" it and ask again for {said.environment!r}"
            )
        changes.update(environment=said.environment, environment_source="text")
    return intent.model_copy(update=changes)
