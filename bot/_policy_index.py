"""Casbin's verdict and explanation for LAM's matcher, from an index instead of a scan.

Casbin's ``enforce_ex`` evaluates the matcher against every ``p`` rule in file order, which
costs tens of milliseconds with ten thousand rules. For LAM's matcher (``LAM_MATCHER``) a
rule matches a request exactly when:

- its subject is the request subject or a role the subject reaches through ``g`` links in
  the request's environment (Casbin's ``g()`` with LAM's domain matching; ``SubjectRoles``);
- ``wildcard_match`` matches the environment, action and resource to its patterns;
- its verb is the request verb, or it is a deny rule with the verb ``*``.

The answer is the allow-and-deny effect: some matching allow and no matching deny.

The explanation follows pycasbin 2.8's ``enforce_ex``: it walks the rules in file order,
remembers the last one that matched and stops at the first matching deny. So it names the
first matching deny rule when one matches, else the last matching allow rule, else none.
Other Casbin versions differ (Go Casbin names the first matching allow; pycasbin before
the fix for its issue #411 named no allow rule under this effect), which is why the tests
compare this index with the installed Casbin rather than with a fixed expectation.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# pycasbin ships no type hints (no py.typed), so everything from it is ``Any``.
import casbin  # type: ignore[import-untyped]

from bot._policy_files import Rule, wildcard_match

LAM_MATCHER = (
    "g(r_sub, p_sub, r_env) && wildcardMatch(r_env, p_env) && wildcardMatch(r_act, p_act)"
    ' && wildcardMatch(r_res, p_res) && (r_verb == p_verb || (p_verb == "*" && p_eft == "deny"))'
)
"""The matcher this index computes, as Casbin holds it (``p.sub`` written ``p_sub``)."""

ROLE_CACHE_SIZE = 16_384
"""How many ``(subject, environment)`` role resolutions ``SubjectRoles`` keeps."""


def indexes(matcher: str) -> bool:
    """Whether the index computes ``matcher``: LAM's own, give or take whitespace.

    Any other matcher (``model.conf`` allows changing it) must be evaluated by Casbin.
    """
    return _spaced(matcher) == _spaced(LAM_MATCHER)


def _spaced(text: str) -> str:
    # Runs of whitespace become one space; deleting them could join two tokens into one.
    return re.sub(r"\s+", " ", text).strip()


def _anything(value: str) -> bool:
    return True


def _pattern(pattern: str) -> Callable[[str], bool]:
    """A test of values against a ``wildcard_match`` pattern, fast for the common shapes.

    A lone ``*`` matches every value and a pattern without ``*`` matches only itself, as
    ``bot._policy_files`` documents; every other pattern goes to ``wildcard_match``.
    """
    if pattern == "*":
        return _anything
    if "*" not in pattern:
        return pattern.__eq__
    return functools.partial(_matches, pattern)


def _matches(pattern: str, value: str) -> bool:
    return wildcard_match(value, pattern)


@dataclass(frozen=True, slots=True)
class _Entry:
    """A rule with its place in the file and its patterns ready to test."""

    position: int
    rule: Rule
    environment: Callable[[str], bool]
    action: Callable[[str], bool]
    resource: Callable[[str], bool]


def _position(entry: _Entry) -> int:
    return entry.position


class _Bucket:
    """The rules of one subject, verb and effect, by literal action, in file order."""

    __slots__ = ("by_action", "wild")

    def __init__(self, entries: Sequence[_Entry]) -> None:
        by_action: dict[str, list[_Entry]] = {}
        wild: list[_Entry] = []
        for entry in entries:
            if "*" in entry.rule.action:
                wild.append(entry)
            else:
                by_action.setdefault(entry.rule.action, []).append(entry)
        self.by_action = {action: tuple(group) for action, group in by_action.items()}
        self.wild = tuple(wild)

    def runs(self, action: str) -> tuple[tuple[_Entry, ...], tuple[_Entry, ...]]:
        """The two runs, each in file order, that hold every rule whose action may match."""
        return self.by_action.get(action, ()), self.wild


def _first(
    bucket: _Bucket | None, best: _Entry | None, environment: str, action: str, resource: str
) -> _Entry | None:
    """The earliest matching entry of ``bucket`` if it comes before ``best``, else ``best``."""
    if bucket is None:
        return best
    for run in bucket.runs(action):
        for entry in run:
            if best is not None and entry.position > best.position:
                break
            if entry.environment(environment) and entry.action(action) and entry.resource(resource):
                best = entry
                break
    return best


def _last(
    bucket: _Bucket | None, best: _Entry | None, environment: str, action: str, resource: str
) -> _Entry | None:
    """The latest matching entry of ``bucket`` if it comes after ``best``, else ``best``."""
    if bucket is None:
        return best
    for run in bucket.runs(action):
        for entry in reversed(run):
            if best is not None and entry.position < best.position:
                break
            if entry.environment(environment) and entry.action(action) and entry.resource(resource):
                best = entry
                break
    return best


class _Grants:
    """The allow rules of one verb, whatever their subject, found by their action."""

    __slots__ = ("by_action", "by_prefix")

    def __init__(self, entries: Sequence[_Entry]) -> None:
        by_action: dict[str, list[_Entry]] = {}
        by_prefix: dict[str, list[_Entry]] = {}
        for entry in entries:
            head, star, _ = entry.rule.action.partition("*")
            (by_prefix if star else by_action).setdefault(head, []).append(entry)
        self.by_action = {action: tuple(group) for action, group in by_action.items()}
        self.by_prefix = {head: tuple(group) for head, group in by_prefix.items()}

    def covering(self, environment: str, action: str, resource: str) -> list[_Entry]:
        """The entries whose patterns match, in no particular order."""
        # A pattern can only match a value that starts with the text before its first *.
        runs = [self.by_action.get(action, ())]
        runs += [self.by_prefix.get(action[:end], ()) for end in range(len(action) + 1)]
        return [
            entry
            for run in runs
            for entry in run
            if entry.environment(environment) and entry.action(action) and entry.resource(resource)
        ]


class RuleIndex:
    """The ``p`` rules by subject, verb and effect; immutable once built."""

    __slots__ = ("_allows", "_denies", "_grants")

    def __init__(self, rules: Iterable[Rule]) -> None:
        groups: dict[tuple[str, str, str], list[_Entry]] = {}
        for position, rule in enumerate(rules):
            if rule.effect not in ("allow", "deny"):
                raise ValueError(f"rule {str(rule)!r} has effect {rule.effect!r}; cannot index it")
            entry = _Entry(
                position,
                rule,
                _pattern(rule.environment),
                _pattern(rule.action),
                _pattern(rule.resource),
            )
            groups.setdefault((rule.effect, rule.subject, rule.verb), []).append(entry)
        self._allows = {
            (subject, verb): _Bucket(group)
            for (effect, subject, verb), group in groups.items()
            if effect == "allow"
        }
        self._denies = {
            (subject, verb): _Bucket(group)
            for (effect, subject, verb), group in groups.items()
            if effect == "deny"
        }
        by_verb: dict[str, list[_Entry]] = {}
        for (effect, _, verb), group in groups.items():
            if effect == "allow":
                by_verb.setdefault(verb, []).extend(group)
        self._grants = {verb: _Grants(group) for verb, group in by_verb.items()}

    def granting(self, verb: str, environment: str, action: str, resource: str) -> tuple[str, ...]:
        """The subjects of allow rules for ``verb`` whose patterns cover the step.

        In the order their first such rule appears in the file, each once: the same as
        filtering every rule with ``Rule.covers``, without looking at every rule. Subjects
        only, roles not followed, deny rules not applied: candidates (approvers, say), each
        still to be evaluated as a request of its own.
        """
        grants = self._grants.get(verb)
        if grants is None:
            return ()
        covering = sorted(grants.covering(environment, action, resource), key=_position)
        return tuple(dict.fromkeys(entry.rule.subject for entry in covering))

    def decide(
        self, subjects: Iterable[str], environment: str, action: str, resource: str, verb: str
    ) -> tuple[bool, Rule | None]:
        """Casbin's answer for a request whose subject acts as ``subjects``, and its rule.

        ``subjects`` is the request subject and every role it holds in ``environment``
        (``SubjectRoles.held``); the other arguments are the request as Casbin sees it.
        """
        held = tuple(subjects)
        # A deny rule with the verb * matches every verb (the matcher's second branch).
        deny_verbs = (verb,) if verb == "*" else (verb, "*")
        deny: _Entry | None = None
        for subject in held:
            for deny_verb in deny_verbs:
                bucket = self._denies.get((subject, deny_verb))
                deny = _first(bucket, deny, environment, action, resource)
        if deny is not None:
            return False, deny.rule
        allow: _Entry | None = None
        for subject in held:
            allow = _last(self._allows.get((subject, verb)), allow, environment, action, resource)
        return (True, allow.rule) if allow is not None else (False, None)


class SubjectRoles:
    """The subjects a request subject acts as in an environment, as Casbin's ``g()`` sees them.

    The links are Casbin's (its grouping policy); following them is done here, the way
    Casbin's domain role manager does with the domain matching LAM registers: a link counts
    in an environment its environment equals or matches as a ``wildcard_match`` pattern,
    and the walk stops where Casbin's ``has_link`` stops, after ``max_hierarchy_level - 1``
    links, so a role further up a longer chain grants nothing, exactly as in Casbin.

    Casbin's role manager is not asked at run time because it builds a role graph per
    environment on first use, in time proportional to links × roles: about two seconds
    for the first request in each environment after each reload, with 2,000 links.

    Results are cached per ``(subject, environment)``; the links never change under a
    ``SubjectRoles`` (a reload builds a new one).
    """

    __slots__ = ("_levels", "_links", "held")

    def __init__(self, enforcer: casbin.Enforcer, cache_size: int = ROLE_CACHE_SIZE) -> None:
        self._levels = int(enforcer.get_model()["g"]["g"].rm.max_hierarchy_level)
        self._links: dict[str, list[tuple[str, str]]] = {}
        for member, role, environment in enforcer.get_grouping_policy():
            self._links.setdefault(str(member), []).append((str(role), str(environment)))
        self.held: Callable[[str, str], tuple[str, ...]] = functools.lru_cache(cache_size)(
            self._resolve
        )
        """The subject, then the roles and groups it holds in the environment, breadth first."""

    def _resolve(self, subject: str, environment: str) -> tuple[str, ...]:
        held = [subject]
        seen = {subject}
        frontier = [subject]
        # has_link tests the subject itself at level max_hierarchy_level and gives up at 0.
        for _ in range(self._levels - 1):
            following = []
            for name in frontier:
                for role, pattern in self._links.get(name, ()):
                    if role not in seen and (
                        pattern == environment or wildcard_match(environment, pattern)
                    ):
                        seen.add(role)
                        held.append(role)
                        following.append(role)
            if not following:
                break
            frontier = following
        return tuple(held)
