"""Policy: whether a subject may run, request or approve a step, and the rule that decided.

Casbin evaluates ``policies/model.conf`` over the rules of ``policies/policy.csv`` (read and
checked by ``bot._policy_files``). This module normalises the resource of every request
and turns the verdicts for ``run``, ``request`` and ``approve`` into one ``Decision`` per
step.

Verbs: ``run``, ``request`` and ``approve`` are granted separately; ``*`` is accepted on deny
rules only, where it denies all three. A deny rule beats every allow rule; what no rule
allows is denied. Subjects are matched exactly, through roles.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

# pycasbin ships no type hints (no py.typed), so everything from it is ``Any``.
import casbin  # type: ignore[import-untyped]

from bot._policy_files import (
    MODEL_FILE,
    POLICY_FILE,
    Quorum,
    Rule,
    canonical_resource,
    check_matcher_names,
    load_model,
    model_keys,
    parse_policy,
    read_policy_file,
    wildcard_match,
)
from bot._policy_index import RuleIndex, SubjectRoles, indexes
from bot.errors import ConfigError
from bot.models import Decision, DecisionKind, Step, Verb


@dataclass(frozen=True, slots=True)
class _Verdict:
    allowed: bool
    rule: Rule | None
    """The deciding rule: an allow rule when allowed, a deny rule or None otherwise."""
    reason: str


def _target(action: str, resource: str) -> str:
    return repr(action) if resource == "*" else f"{action!r} for {resource!r}"


def _no_rule(subject: str, environment: str, action: str, resource: str, verbs: str) -> str:
    target = _target(action, resource)
    return f"no rule grants {verbs} on {target} in {environment!r} to {subject!r} (default deny)"


def _groups(groups: Iterable[str]) -> tuple[str, ...]:
    """Directory groups as a cache key: ``group:`` subjects only, sorted, each once.

    A front passes the groups it found a person in; anything else (a role, a user) would
    let it grant roles policy does not, so it is refused.
    """
    found = tuple(sorted(set(groups)))
    for group in found:
        if not group.startswith("group:"):
            raise ValueError(f"{group!r} is not a group: subject")
    return found


def _request_problem(environment: str, action: str) -> str | None:
    """Why a request cannot be evaluated at all: a pattern where a concrete name belongs."""
    for name, value in (("environment", environment), ("action", action)):
        if not value or "*" in value:
            return f"{name} {value!r} is not a concrete {name}; refusing to evaluate policy"
    return None


DECISION_CACHE_SIZE = 16_384
"""How many verdicts a ``Policy`` keeps, keyed by the whole canonical request."""


class Policy:
    """The loaded policy files; immutable, so a reload builds a new one and swaps it in."""

    __slots__ = (
        "_approvers",
        "_by_fields",
        "_decisions",
        "_enforcer",
        "_index",
        "_indexed",
        "_matcher_at",
        "_protected",
        "_quorums",
        "_roles",
        "_rules",
    )

    def __init__(
        self,
        enforcer: casbin.Enforcer,
        rules: Iterable[Rule],
        matcher_at: str,
        *,
        quorums: Iterable[Quorum] = (),
        protected: Iterable[str] = (),
    ) -> None:
        self._quorums = tuple(quorums)
        self._protected = tuple(protected)
        self._enforcer = enforcer
        self._matcher_at = matcher_at
        self._rules = tuple(rules)
        self._by_fields = {rule.fields: rule for rule in self._rules}
        # Casbin scans every rule per request; for LAM's own matcher an index gives the same
        # verdict and explanation (bot._policy_index). Another matcher is left to Casbin.
        self._roles = SubjectRoles(enforcer)
        self._index = RuleIndex(self._rules)
        self._indexed = indexes(enforcer.get_model()["m"]["m"].value)
        # Each step is checked when planned, at approval and before it runs: remember the
        # verdicts. The cache lives and dies with this Policy, so a reload, which swaps in
        # a new Policy, drops it at once (the cache holds a bound method of this Policy: the
        # cycle collector frees both). functools.lru_cache stays consistent under threads;
        # LAM calls it from one event loop.
        self._decisions: Callable[[str, str, str, str, Verb, tuple[str, ...]], _Verdict] = (
            functools.lru_cache(DECISION_CACHE_SIZE)(self._evaluate_uncached)
        )
        self._approvers: Callable[[str, str, str], tuple[str, ...]] = functools.lru_cache(
            DECISION_CACHE_SIZE
        )(self._approvers_uncached)

    @classmethod
    def load(cls, policy_dir: Path) -> Policy:
        """Read ``model.conf`` and ``policy.csv`` from ``policy_dir``.

        Raises ``ConfigError`` naming the file, the line and the problem when either file
        is missing or invalid.
        """
        model_path, policy_path = policy_dir / MODEL_FILE, policy_dir / POLICY_FILE
        model_text = read_policy_file(model_path)
        keys = model_keys(model_path, model_text)
        enforcer = casbin.Enforcer(load_model(model_path, model_text, keys))
        enforcer.add_function("wildcardMatch", wildcard_match)
        enforcer.add_named_domain_matching_func("g", wildcard_match)
        matcher_at = f"{model_path}:{keys['m']}"
        matcher = enforcer.get_model()["m"]["m"].value
        check_matcher_names(matcher_at, matcher, {"g", *enforcer.fm.get_functions()})
        # No adapter: the rules come from our own parser, which checks every line.
        lines = parse_policy(policy_path, read_policy_file(policy_path))
        rules, links = lines.rules, lines.links
        if rules:
            enforcer.add_policies([list(rule.fields) for rule in rules])
        if links:
            enforcer.add_grouping_policies([list(link) for link in links])
        try:
            # Casbin compiles the matcher only when it evaluates a request: evaluate one now.
            enforcer.enforce_ex("user:lam-load-check", "lam-load-check", "lam.check", "*", "run")
        except Exception as exc:  # Casbin raises whatever its expression evaluator raises.
            raise ConfigError(f"{matcher_at}: the matcher cannot be evaluated: {exc}") from exc
        return cls(enforcer, rules, matcher_at, quorums=lines.quorums, protected=lines.protected)

    def check(
        self,
        subject: str,
        environment: str,
        action: str,
        resource: str,
        verb: Verb,
        *,
        groups: Iterable[str] = (),
    ) -> tuple[bool, str]:
        """Whether ``subject`` may ``verb`` the action, and the deciding rule or why none did.

        ``groups`` are directory groups (``group:HANDLE``) the subject belongs to, as a
        front found them; their roles count as the subject's own.
        """
        resource = canonical_resource(resource)
        verdict = self._evaluate(subject, environment, action, resource, verb, _groups(groups))
        return verdict.allowed, verdict.reason

    def decide(self, subject: str, step: Step, *, groups: Iterable[str] = ()) -> Decision:
        """``allow`` if the subject may run the step, ``needs_approval`` if it may request it.

        A request is only worth making when someone may approve it: with no approver the
        step is denied, naming the rule that lacks one. A ``destructive`` step in a
        protected environment needs approval even with ``run``, unless the rule that
        grants ``run`` names the action exactly (no ``*`` in its action).
        """
        env, action, resource = step.environment, step.action, canonical_resource(step.resource)
        member_of = _groups(groups)

        def decision(
            kind: DecisionKind, rule: str, approvers: tuple[str, ...] = (), required: int = 0
        ) -> Decision:
            return Decision(
                step_id=step.id,
                action=action,
                environment=env,
                resource=resource,
                decision=kind,
                rule=rule,
                approvers=approvers,
                approvals_required=required,
            )

        if problem := _request_problem(env, action):
            return decision("deny", problem)
        run = self._evaluate(subject, env, action, resource, "run", member_of)
        guarded = (
            run.allowed
            and step.risk == "destructive"
            and self.is_protected(env)
            and run.rule is not None
            and run.rule.action != action
        )
        if run.allowed and not guarded:
            return decision("allow", run.reason)
        request = self._evaluate(subject, env, action, resource, "request", member_of)
        if guarded:
            # Whoever may run it may certainly ask for it.
            request = _Verdict(
                True,
                run.rule,
                f"{run.reason}; but {action!r} is destructive and {env!r} is protected, so it"
                " needs approval unless a 'run' rule names the action exactly",
            )
        if request.allowed:
            if approvers := self._approvers(env, action, resource):
                required, quorum = self._quorum(env, action, resource)
                reason = f"{request.reason}; {quorum}" if quorum else request.reason
                return decision("needs_approval", reason, approvers, required)
            return decision(
                "deny",
                f"{request.reason} lets {subject!r} ask, but no rule grants 'approve' on "
                f"{_target(action, resource)} in {env!r} to anyone",
            )
        denial = request if request.rule is not None else run
        if denial.rule is not None:
            return decision("deny", denial.reason)
        return decision("deny", _no_rule(subject, env, action, resource, "'run' or 'request'"))

    def is_protected(self, environment: str) -> bool:
        """Whether a ``protect`` line of policy.csv covers ``environment``."""
        return any(wildcard_match(environment, pattern) for pattern in self._protected)

    def _quorum(self, environment: str, action: str, resource: str) -> tuple[int, str | None]:
        """Distinct approvals a step needs: the largest covering ``q`` line, else one."""
        covering = [q for q in self._quorums if q.covers(environment, action, resource)]
        if not covering:
            return 1, None
        strictest = max(covering, key=lambda q: q.approvals)
        return strictest.approvals, f"{strictest} ({strictest.approvals} distinct approvers)"

    def may_approve(
        self, approver: str, step: Step, *, groups: Iterable[str] = ()
    ) -> tuple[bool, str]:
        """Whether ``approver`` may approve ``step``, and the deciding rule or why none did."""
        return self.check(
            approver, step.environment, step.action, step.resource, "approve", groups=groups
        )

    def roles_of(self, subject: str, environment: str, *, groups: Iterable[str] = ()) -> list[str]:
        """The roles and groups ``subject`` holds in ``environment``, inherited ones included.

        Breadth first, as far up a chain of roles as Casbin follows one when it decides.
        """
        return list(self._held(subject, environment, _groups(groups))[1:])

    def permitted_actions(
        self,
        subject: str,
        environment: str,
        action_ids: Iterable[str],
        *,
        groups: Iterable[str] = (),
    ) -> list[str]:
        """The actions ``subject`` may run or request in ``environment`` on some resource.

        Each ``run`` or ``request`` allow rule for an action is tried with its own resource
        pattern as the resource (its ``*`` standing for itself). A deny rule matches that
        literal pattern exactly when it covers every resource the allow rule grants, so an
        action is listed if and only if at least one resource is left to it.
        """
        # Only rules of the subject itself or of a role it holds can grant it anything.
        member_of = _groups(groups)
        held = set(self._held(subject, environment, member_of))
        grants = [
            rule
            for rule in self._rules
            if rule.subject in held
            and rule.effect == "allow"
            and rule.verb in ("run", "request")
            and wildcard_match(environment, rule.environment)
        ]
        return [
            action
            for action in action_ids
            if any(
                self._evaluate(
                    subject, environment, action, rule.resource, rule.verb, member_of
                ).allowed
                for rule in grants
                if rule.verb != "*" and wildcard_match(action, rule.action)
            )
        ]

    def _held(self, subject: str, environment: str, groups: tuple[str, ...]) -> tuple[str, ...]:
        """The subject, the roles it holds, then its directory groups and their roles."""
        held = self._roles.held(subject, environment)
        for group in groups:
            held += tuple(r for r in self._roles.held(group, environment) if r not in held)
        return held

    def _evaluate(
        self,
        subject: str,
        environment: str,
        action: str,
        resource: str,
        verb: Verb,
        groups: tuple[str, ...] = (),
    ) -> _Verdict:
        """The verdict on one canonical request and the rule Casbin would name for it."""
        return self._decisions(subject, environment, action, resource, verb, groups)

    def _evaluate_uncached(
        self,
        subject: str,
        environment: str,
        action: str,
        resource: str,
        verb: Verb,
        groups: tuple[str, ...] = (),
    ) -> _Verdict:
        """``_evaluate`` without the cache: from the index, or from Casbin for another matcher."""
        if not self._indexed:
            verdicts = [
                self._evaluate_with_casbin(member, environment, action, resource, verb)
                for member in (subject, *groups)
            ]
            # Allow-override-by-deny across the subject and its groups: any deny rule
            # wins, then any allow, else the subject's own "no rule".
            denials = [v for v in verdicts if not v.allowed and v.rule is not None]
            grants = [v for v in verdicts if v.allowed]
            return (denials or grants or verdicts)[0]
        if problem := _request_problem(environment, action):
            return _Verdict(False, None, problem)
        held = self._held(subject, environment, groups)
        allowed, rule = self._index.decide(held, environment, action, resource, verb)
        if rule is None:
            return _Verdict(
                False, None, _no_rule(subject, environment, action, resource, repr(verb))
            )
        return _Verdict(allowed, rule, str(rule))

    def _evaluate_with_casbin(
        self, subject: str, environment: str, action: str, resource: str, verb: Verb
    ) -> _Verdict:
        """Ask Casbin about one canonical request and find the rule its explanation names.

        The reference the index must agree with; used for matchers the index does not know.
        """
        if problem := _request_problem(environment, action):
            return _Verdict(False, None, problem)
        try:
            allowed, explained = self._enforcer.enforce_ex(
                subject, environment, action, resource, verb
            )
        except Exception as exc:  # A matcher can fail on values the load-time check never saw.
            return _Verdict(
                False, None, f"{self._matcher_at}: the matcher failed ({exc!r}); denied"
            )
        rule = self._by_fields.get(tuple(explained))
        if rule is None:
            if allowed:  # Fail closed: an allow must always be explained by an allow rule.
                return _Verdict(False, None, f"unexplained allow of {verb!r}; refusing it")
            return _Verdict(
                False, None, _no_rule(subject, environment, action, resource, repr(verb))
            )
        # Under allow-and-deny, Casbin stops at the first matching deny rule and names it;
        # when it allows, it names the last matching allow rule.
        return _Verdict(bool(allowed) and rule.effect == "allow", rule, str(rule))

    def _approvers_uncached(self, environment: str, action: str, resource: str) -> tuple[str, ...]:
        """Subjects of ``approve`` allow rules for this step that no deny rule overrides."""
        return tuple(
            subject
            for subject in self._index.granting("approve", environment, action, resource)
            if self._evaluate(subject, environment, action, resource, "approve").allowed
        )
