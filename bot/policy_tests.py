"""Policy tests: ``policies/tests/*.yaml`` cases of subject, step and expected decision.

``lam policy test`` runs them, so a policy change can be tested before it is deployed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError, field_validator

from bot._policy_files import SUBJECT_PREFIXES, read_policy_file
from bot.config import yaml_problem
from bot.errors import ConfigError
from bot.models import DecisionKind, Model, Risk, Step
from bot.policy import Policy


class PolicyTestCase(Model):
    """One expectation from ``policies/tests/*.yaml``: this subject, this step, this outcome."""

    subject: str
    """Prefixed, e.g. ``user:alice``: an unprefixed name would be denied for the wrong reason."""
    environment: str
    action: str
    resource: str = "*"
    risk: Risk | None = None
    """The action's risk; by default what the installed connector declares, else ``read``."""
    expect: DecisionKind
    name: str | None = None
    expect_rule: str | None = None
    """Text the deciding rule must contain, e.g. ``, deny`` or ``(default deny)``."""
    expect_approvers: tuple[str, ...] | None = None
    """The approvers a ``needs_approval`` decision must name, in any order."""
    expect_approvals: int | None = None
    """How many distinct approvals a ``needs_approval`` decision must ask for."""

    @field_validator("subject")
    @classmethod
    def _prefixed(cls, subject: str) -> str:
        if not subject.startswith(SUBJECT_PREFIXES):
            raise ValueError(f"subject {subject!r} needs a prefix, e.g. 'user:{subject}'")
        return subject

    def step(self, risks: Mapping[str, Risk]) -> Step:
        return Step(
            id=self.name or "policy-test",
            action=self.action,
            args={},
            environment=self.environment,
            resource=self.resource,
            risk=self.risk or risks.get(self.action, "read"),
        )


class PolicyTestResult(Model):
    """How one policy test case fared: what it expected and what policy decided."""

    file: str
    case: PolicyTestCase
    passed: bool
    expected: DecisionKind
    actual: DecisionKind
    rule: str
    """The rule that decided, or why none did."""
    approvers: tuple[str, ...] = ()
    approvals_required: int = 0

    def describe(self) -> str:
        """One line for a report: the case, what it expects, what policy decided and why."""
        case = self.case
        what = case.name or f"{case.subject} {case.action} {case.resource!r} in {case.environment}"
        expected = self.expected + (
            f" by a rule containing {case.expect_rule!r}" if case.expect_rule is not None else ""
        )
        if case.expect_approvers is not None:
            expected += f" approved by {', '.join(case.expect_approvers) or 'nobody'}"
        if case.expect_approvals is not None:
            expected += f" with {case.expect_approvals} approval(s)"
        got = f"{self.actual} by {self.rule}"
        if self.approvers:
            got += f", approved by {', '.join(self.approvers)}"
            got += f" with {self.approvals_required} approval(s)"
        return f"{Path(self.file).name}: {what}: expected {expected}; got {got}"


def load_policy_tests(path: Path) -> list[PolicyTestCase]:
    """The cases of one test file: a YAML list of mappings with ``PolicyTestCase`` fields."""
    try:
        data = yaml.safe_load(read_policy_file(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if isinstance(mark, yaml.Mark) else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {yaml_problem(exc)}") from exc
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a YAML list of test cases, got {type(data).__name__}")
    cases = []
    for index, item in enumerate(data, start=1):
        try:
            cases.append(PolicyTestCase.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'case'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"{path}: case {index}: {problems}") from exc
    return cases


def run_policy_tests(
    policy: Policy, tests_dir: Path, risks: Mapping[str, Risk] | None = None
) -> list[PolicyTestResult]:
    """Decide every case in ``tests_dir/*.yaml`` (and ``*.yml``) and compare it with ``expect``.

    ``risks`` maps action ids to the risk their connectors declare, for cases that do not
    state one.
    """
    if not tests_dir.is_dir():
        raise ConfigError(f"{tests_dir}: policy test directory not found")
    results = []
    for path in sorted([*tests_dir.glob("*.yaml"), *tests_dir.glob("*.yml")]):
        for case in load_policy_tests(path):
            decision = policy.decide(case.subject, case.step(risks or {}))
            passed = (
                decision.decision == case.expect
                and (case.expect_rule is None or case.expect_rule in decision.rule)
                and (
                    case.expect_approvers is None
                    or sorted(case.expect_approvers) == sorted(decision.approvers)
                )
                and (
                    case.expect_approvals is None
                    or case.expect_approvals == decision.approvals_required
                )
            )
            results.append(
                PolicyTestResult(
                    file=str(path),
                    case=case,
                    passed=passed,
                    expected=case.expect,
                    actual=decision.decision,
                    rule=decision.rule,
                    approvers=decision.approvers,
                    approvals_required=decision.approvals_required,
                )
            )
    return results
