"""What planning costs: model calls and tokens, per ``plan`` and per request.

A planner records the usage of each ``plan`` or ``revise`` into the meter of the current
task, if any: the engine opens one with ``metered()`` around planning and audits it,
whether planning succeeded or not. Nothing is passed through the ``Planner`` protocol.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from bot.models import Model

CHARS_PER_TOKEN = 4
"""For estimating usage when a server does not report it: generous for English text."""


class PlanningUsage(Model):
    """What one ``plan`` or ``revise`` cost, for the audit trail."""

    model: str
    calls: int = 0
    """Model calls answered (retries inside the ``openai`` client not counted)."""
    repairs: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False
    """Some answer lacked ``usage``: its tokens were estimated from the text's length."""


class UsageMeter:
    """Collects the usage of every planning call made inside ``metered()``."""

    def __init__(self) -> None:
        self.usages: list[PlanningUsage] = []

    @property
    def total_tokens(self) -> int:
        return sum(usage.total_tokens for usage in self.usages)

    @property
    def calls(self) -> int:
        return sum(usage.calls for usage in self.usages)


_meter: contextvars.ContextVar[UsageMeter | None] = contextvars.ContextVar(
    "lam_planning_meter", default=None
)


@contextmanager
def metered() -> Iterator[UsageMeter]:
    """Record what the planning calls made in this block (in this task) cost.

    The usage is recorded whether planning succeeds or raises, so the engine can audit
    the tokens a refused or failed plan spent too::

        with metered() as usage:
            plan = await planner.plan(intent, catalog)
        ... usage.total_tokens
    """
    meter = UsageMeter()
    token = _meter.set(meter)
    try:
        yield meter
    finally:
        _meter.reset(token)


def record(usage: PlanningUsage) -> None:
    """Add ``usage`` to the meter of the current task; without one, nothing is kept."""
    if (meter := _meter.get()) is not None:
        meter.usages.append(usage)


@dataclass
class Tally:
    """The usage of one ``plan`` or ``revise`` so far, call by call."""

    usage: PlanningUsage

    def add(self, completion: ChatCompletion, sent: Sequence[ChatCompletionMessageParam]) -> None:
        reported = completion.usage
        if reported is not None:
            prompt, answer = reported.prompt_tokens, reported.completion_tokens
            total, estimated = reported.total_tokens, self.usage.estimated
        else:
            prompt = len(json.dumps(list(sent), default=str)) // CHARS_PER_TOKEN
            answer = len(completion.model_dump_json()) // CHARS_PER_TOKEN
            total, estimated = prompt + answer, True
        u = self.usage
        self.usage = u.model_copy(
            update={
                "calls": u.calls + 1,
                "prompt_tokens": u.prompt_tokens + prompt,
                "completion_tokens": u.completion_tokens + answer,
                "total_tokens": u.total_tokens + total,
                "estimated": estimated,
            }
        )
