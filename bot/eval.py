"""Planner evaluation: a corpus of requests with the plans they should get, scored.

A corpus is YAML::

    cases:
      - id: tail-lines
        request: show the last 20 lines of /var/log/syslog
        expect:                       # the plan: actions in order, with key arguments
          - action: shell.tail_log
            args: {lines: 20}
        tags: [tail_log, offline]
      - id: wipe
        request: rm -rf /
        expect: refuse                # nothing may be planned
      - id: which-log
        request: tail the log
        expect: clarify               # the planner must ask

Each request goes through intent understanding (environment and dry-run phrases) and
then the planner, exactly as in the engine, but nothing is decided or run. A planned case
passes when the actions match in order and each expected argument equals the planned
one (both normalised by the action's ``Params``, so ``/var/log/../log/x`` and its
resolved path compare equal), and ``environment`` and ``dry_run`` match when given.
``refuse`` passes when the planner refuses (``NoPlan``, ``InvalidInput``); a model that
cannot be reached fails every case, whatever it expects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, JsonValue, ValidationError, computed_field

from bot.errors import ConfigError, InvalidInput, LamError, NoPlan
from bot.intent import understand
from bot.models import Model, Plan, Request
from bot.planning import Planner
from bot.planning.llm import ClarificationNeeded, ModelUnavailable, metered
from connectors import Catalog, describe_validation_error

Got = Literal["plan", "refuse", "clarify", "error"]


class ExpectedStep(Model):
    action: str
    args: dict[str, JsonValue] = Field(default_factory=dict)
    """Key arguments: each must be in the planned step with this value; others may be too."""
    environment: str | None = None


class Case(Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    request: str
    expect: Literal["refuse", "clarify"] | tuple[ExpectedStep, ...]
    dry_run: bool | None = None
    """When set, the plan's dry-run mode must be this."""
    requester: str | None = None
    environment: str | None = None
    """The environment a front would fix (like ``--env``); ``None``: from the text."""
    tags: tuple[str, ...] = ()


class Corpus(Model):
    requester: str = "user:eval"
    environments: tuple[str, ...] = ("dev", "staging", "prod")
    default_environment: str = "dev"
    cases: tuple[Case, ...] = Field(min_length=1)


class CaseResult(Model):
    id: str
    request: str
    expected: str
    got: Got
    planned: str
    """The plan as ``action(args) → action(args)``, or the error, for reading the report."""
    passed: bool
    problem: str | None = None
    tags: tuple[str, ...] = ()
    tokens: int = 0


class Score(Model):
    passed: int
    total: int

    @computed_field  # type: ignore[prop-decorator]  # mypy does not know computed_field
    @property
    def accuracy(self) -> float:
        """``passed / total``; in the JSON report too."""
        return self.passed / self.total if self.total else 0.0


class EvalReport(Model):
    planner: str
    cases: tuple[CaseResult, ...]
    overall: Score
    by_tag: dict[str, Score]
    by_expectation: dict[str, Score]
    """Scores of the cases expecting a plan, a refusal and a clarification."""
    tokens: int = 0
    """Model tokens the whole run used (0 for the offline planner)."""

    @classmethod
    def of(cls, planner: str, results: Sequence[CaseResult]) -> EvalReport:
        def score(selected: Sequence[CaseResult]) -> Score:
            return Score(passed=sum(r.passed for r in selected), total=len(selected))

        tags = sorted({tag for result in results for tag in result.tags})
        kinds = Counter(_kind(r.expected) for r in results)
        return cls(
            planner=planner,
            cases=tuple(results),
            overall=score(results),
            by_tag={tag: score([r for r in results if tag in r.tags]) for tag in tags},
            by_expectation={
                kind: score([r for r in results if _kind(r.expected) == kind]) for kind in kinds
            },
            tokens=sum(r.tokens for r in results),
        )

    def render(self) -> str:
        """The report for a terminal: failures first, then the scores."""
        lines = [
            f"FAIL {r.id}: {r.request!r}: expected {r.expected}, got {r.planned}"
            + (f" ({r.problem})" if r.problem and r.got == "plan" else "")
            for r in self.cases
            if not r.passed
        ]
        lines.append(
            f"{self.planner}: {self.overall.passed}/{self.overall.total} passed"
            f" ({self.overall.accuracy:.0%}), {self.tokens} model tokens"
        )
        for title, scores in (("expected", self.by_expectation), ("tag", self.by_tag)):
            lines += [
                f"  {title} {name}: {s.passed}/{s.total} ({s.accuracy:.0%})"
                for name, s in sorted(scores.items())
            ]
        return "\n".join(lines)


def load_corpus(path: Path) -> Corpus:
    """Read a corpus file; ``ConfigError`` names the file and the problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read the corpus {str(path)!r}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"the corpus {str(path)!r} is not valid YAML: {error}") from error
    try:
        corpus = Corpus.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(describe_validation_error(e) for e in error.errors()[:5])
        raise ConfigError(f"the corpus {str(path)!r} is invalid: {problems}") from error
    duplicates = [case for case, n in Counter(c.id for c in corpus.cases).items() if n > 1]
    if duplicates:
        raise ConfigError(f"the corpus {str(path)!r} uses case id {duplicates[0]!r} twice")
    return corpus


async def run_eval(corpus_path: Path, planner: Planner, catalog: Catalog) -> EvalReport:
    """Plan every case of the corpus with ``planner`` over ``catalog``, one at a time, and score.

    Nothing is decided or run: this measures the planner alone. The catalog is used as
    given (no policy filtering), so every action in it can be proposed.
    """
    corpus = load_corpus(corpus_path)
    results = [await _run_case(case, corpus, planner, catalog) for case in corpus.cases]
    return EvalReport.of(planner.name, results)


async def _run_case(case: Case, corpus: Corpus, planner: Planner, catalog: Catalog) -> CaseResult:
    expected = _describe_expectation(case)
    with metered() as usage:
        got: Got
        plan: Plan | None = None
        try:
            intent = understand(
                Request(
                    text=case.request,
                    requester=case.requester or corpus.requester,
                    environment=case.environment,
                ),
                environments=corpus.environments,
                default_environment=corpus.default_environment,
            )
            plan = await planner.plan(intent, catalog)
            got, planned = "plan", _describe_plan(plan)
        except ClarificationNeeded as asked:
            got, planned = "clarify", f"a question: {asked.question!r}"
        except ModelUnavailable as error:
            got, planned = "error", f"an error: {error}"
        except (NoPlan, InvalidInput) as refused:
            got, planned = "refuse", f"a refusal: {refused}"
        except LamError as error:
            got, planned = "error", f"an error: {error}"
    problem = _compare(case, got, plan, catalog)
    return CaseResult(
        id=case.id,
        request=case.request,
        expected=expected,
        got=got,
        planned=planned,
        passed=problem is None,
        problem=problem,
        tags=case.tags,
        tokens=usage.total_tokens,
    )


def _compare(case: Case, got: Got, plan: Plan | None, catalog: Catalog) -> str | None:
    """Why the outcome differs from the expectation, or ``None`` when it matches."""
    if isinstance(case.expect, str):
        return None if got == case.expect else f"expected {case.expect}, got {got}"
    if plan is None:
        return f"expected a plan, got {got}"
    actions = [step.action for step in plan.steps]
    wanted = [step.action for step in case.expect]
    if actions != wanted:
        return f"actions {actions} instead of {wanted}"
    for step, expected in zip(plan.steps, case.expect, strict=True):
        for key, value in _normalised(expected, step.args, catalog).items():
            if step.args.get(key) != value:
                return f"{step.id} {key}={step.args.get(key)!r} instead of {value!r}"
        if expected.environment is not None and step.environment != expected.environment:
            return f"{step.id} environment {step.environment!r} instead of {expected.environment!r}"
    if case.dry_run is not None and plan.dry_run != case.dry_run:
        return f"dry_run {plan.dry_run} instead of {case.dry_run}"
    return None


def _normalised(
    expected: ExpectedStep, planned: dict[str, JsonValue], catalog: Catalog
) -> dict[str, JsonValue]:
    """The expected arguments as the action's ``Params`` would store them."""
    if not expected.args or expected.action not in catalog:
        return expected.args
    try:
        params = catalog.validate(expected.action, {**planned, **expected.args})
    except InvalidInput:
        return expected.args
    dumped = params.model_dump(mode="json")
    return {key: dumped.get(key, value) for key, value in expected.args.items()}


def _describe_plan(plan: Plan) -> str:
    return " → ".join(f"{step.action}({_args(step.args)})" for step in plan.steps)


def _describe_expectation(case: Case) -> str:
    if isinstance(case.expect, str):
        return case.expect
    return " → ".join(f"{step.action}({_args(step.args)})" for step in case.expect)


def _args(args: dict[str, JsonValue]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in sorted(args.items()))


def _kind(expected: str) -> str:
    return expected if expected in ("refuse", "clarify") else "plan"
