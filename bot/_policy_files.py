"""Reading LAM's policy files: ``model.conf`` and ``policy.csv``, every line checked.

Casbin accepts malformed rules silently (wrong field counts fail only at enforce time,
unknown line types are skipped), so LAM parses the files itself and names the file, the
line and the problem.

Patterns: the environment, action and resource of a ``p`` rule and the environment of a
``g`` line are matched with ``wildcard_match``: the whole value must match, ``*`` matches
any run of characters (``/`` and ``.`` included) and every other character only itself.
Casbin's ``globMatch`` is not used because its ``*`` stops at ``/`` (so ``*`` would not match
``/var/log/syslog``) and skips dot-files; ``keyMatch`` ignores everything after the first
``*``; ``regexMatch`` is unanchored.
"""

from __future__ import annotations

import ast
import functools
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# pycasbin ships no type hints (no py.typed), so everything from it is ``Any``.
import casbin  # type: ignore[import-untyped]

from bot.errors import ConfigError
from bot.models import Verb

MODEL_FILE = "model.conf"
POLICY_FILE = "policy.csv"
SUBJECT_PREFIXES = ("user:", "group:", "role:")
ROLE_PREFIXES = ("group:", "role:")
VERBS: tuple[Verb, ...] = ("run", "request", "approve")

Effect = Literal["allow", "deny"]
RuleVerb = Verb | Literal["*"]
_RULE_VERBS: dict[str, RuleVerb] = {
    "run": "run",
    "request": "request",
    "approve": "approve",
    "*": "*",
}
_EFFECTS: dict[str, Effect] = {"allow": "allow", "deny": "deny"}

# The model keys, by section, and the shapes bot/policy.py relies on.
_SECTIONS = {
    "request_definition": "r",
    "policy_definition": "p",
    "role_definition": "g",
    "policy_effect": "e",
    "matchers": "m",
}
_REQUEST_TOKENS = ["r_sub", "r_env", "r_act", "r_res", "r_verb"]
_POLICY_TOKENS = ["p_sub", "p_env", "p_act", "p_res", "p_verb", "p_eft"]
_EFFECT = "some(where (p.eft == allow)) && !some(where (p.eft == deny))"


@functools.lru_cache(maxsize=4096)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def wildcard_match(value: str, pattern: str) -> bool:
    """Whether all of ``value`` matches ``pattern``, in which ``*`` matches any characters."""
    return _wildcard_regex(pattern).fullmatch(value) is not None


def canonical_resource(resource: str) -> str:
    """The resource as policy sees it: normalised like a POSIX path, so ``web/../db`` is ``db``.

    An empty resource means no particular target, like ``*``.
    """
    if resource in ("", "*"):
        return "*"
    path = posixpath.normpath(resource)
    # normpath keeps exactly two leading slashes (POSIX allows them a meaning); rules don't.
    return "/" + path.lstrip("/") if path.startswith("//") else path


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``p`` line of ``policy.csv``."""

    subject: str
    environment: str
    action: str
    resource: str
    verb: RuleVerb
    effect: Effect

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.subject, self.environment, self.action, self.resource, self.verb, self.effect)

    def covers(self, environment: str, action: str, resource: str) -> bool:
        """Whether the environment, action and resource patterns all match (subject aside)."""
        return (
            wildcard_match(environment, self.environment)
            and wildcard_match(action, self.action)
            and wildcard_match(resource, self.resource)
        )

    def __str__(self) -> str:
        return "p, " + ", ".join(self.fields)


def read_policy_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: policy file not found; see LAM_POLICY_DIR") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the policy file: {exc}") from exc


def model_keys(path: Path, text: str) -> dict[str, int]:
    """Check the layout of ``model.conf`` and return the line of each key (r, p, g, e, m).

    Casbin's own parser reports a wrong layout late, vaguely, or not at all.
    """
    keys: dict[str, int] = {}
    section: str | None = None
    continued = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if continued:
            continued = line.endswith("\\")
            continue
        if not line or line[0] in "#;":
            continue
        where = f"{path}:{number}"
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section not in _SECTIONS:
                raise ConfigError(
                    f"{where}: unknown section [{section}]; expected one of "
                    + ", ".join(f"[{s}]" for s in _SECTIONS)
                )
            continue
        key, equals, value = (part.strip() for part in line.partition("="))
        if section is None or not equals or not value:
            raise ConfigError(f"{where}: expected 'key = value' inside a section, got {line!r}")
        if key != _SECTIONS[section]:
            raise ConfigError(
                f"{where}: [{section}] holds one key, {_SECTIONS[section]!r}; got {key!r}"
            )
        if key in keys:
            raise ConfigError(f"{where}: {key!r} is defined again (first on line {keys[key]})")
        keys[key] = number
        continued = line.endswith("\\")
    for section, key in _SECTIONS.items():
        if key not in keys:
            raise ConfigError(f"{path}: missing [{section}] with '{key} = ...'")
    return keys


def load_model(path: Path, text: str, keys: dict[str, int]) -> casbin.Model:
    """Parse ``model.conf`` with Casbin and check it has the shape this module relies on."""
    try:
        model = casbin.Enforcer.new_model(text=text)
    except Exception as exc:  # Casbin's parser raises RuntimeError, KeyError, IndexError...
        raise ConfigError(f"{path}: Casbin cannot parse the model: {exc}") from exc
    shapes = (
        ("r", model["r"]["r"].tokens == _REQUEST_TOKENS, "r = sub, env, act, res, verb"),
        ("p", model["p"]["p"].tokens == _POLICY_TOKENS, "p = sub, env, act, res, verb, eft"),
        (
            "g",
            len(model["g"]["g"].tokens) == 3 and not model["g"]["g"].params_tokens,
            "g = _, _, _",
        ),
        ("e", model["e"]["e"].value == _EFFECT.replace(".", "_"), f"e = {_EFFECT}"),
    )
    for key, ok, expected in shapes:
        if not ok:
            raise ConfigError(f"{path}:{keys[key]}: LAM needs exactly {expected!r} here")
    return model


def check_matcher_names(where: str, matcher: str, functions: set[str]) -> None:
    """Refuse a matcher naming an unknown field or function.

    Casbin only notices one when evaluation reaches it, which ``&&`` may postpone until
    some request in production.
    """
    # The operator rewriting Casbin applies before handing the matcher to simpleeval.
    expression = re.sub(r"!(?!=)", "not ", matcher.replace("&&", "and").replace("||", "or"))
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{where}: the matcher is not a valid expression: {exc.msg}") from exc
    known = {*_REQUEST_TOKENS, *_POLICY_TOKENS, *functions, "True", "False", "None"}
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    if unknown := sorted(names - known):

        def dotted(names: Iterable[str]) -> str:
            return ", ".join(re.sub(r"^([rp])_", r"\1.", name) for name in names)

        raise ConfigError(
            f"{where}: the matcher uses unknown names {dotted(unknown)}; it may use the fields "
            f"{dotted([*_REQUEST_TOKENS, *_POLICY_TOKENS])}, g() and the functions "
            + ", ".join(sorted(functions - {"g"}))
        )


@dataclass(frozen=True, slots=True)
class Quorum:
    """One ``q`` line: steps it covers need ``approvals`` distinct approvers, not one."""

    environment: str
    action: str
    resource: str
    approvals: int

    def covers(self, environment: str, action: str, resource: str) -> bool:
        return (
            wildcard_match(environment, self.environment)
            and wildcard_match(action, self.action)
            and wildcard_match(resource, self.resource)
        )

    def __str__(self) -> str:
        return f"q, {self.environment}, {self.action}, {self.resource}, {self.approvals}"


@dataclass(frozen=True, slots=True)
class PolicyLines:
    rules: list[Rule]
    links: list[tuple[str, str, str]]
    quorums: list[Quorum]
    protected: list[str]
    """Environment patterns of ``protect`` lines."""


def parse_policy(path: Path, text: str) -> PolicyLines:
    """The lines of ``policy.csv``, every one checked.

    ``p`` rules and ``g`` links go to Casbin. ``q`` and ``protect`` lines are LAM's own:
    ``q, ENVIRONMENT, ACTION, RESOURCE, N`` makes a step those patterns cover wait for N
    distinct approvers; ``protect, ENVIRONMENT`` marks environments where a destructive
    step needs approval unless a ``run`` rule names its action exactly.
    """
    rules: list[Rule] = []
    links: list[tuple[str, str, str]] = []
    quorums: list[Quorum] = []
    protected: list[str] = []
    seen: dict[tuple[str, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if "#" in line:
            raise ConfigError(f"{where}: comments must be whole lines starting with '#': {line!r}")
        kind, *fields = (field.strip() for field in line.split(","))
        if kind == "p":
            rules.append(_parse_rule(where, fields))
        elif kind == "g":
            links.append(_parse_link(where, fields))
        elif kind == "q":
            quorums.append(_parse_quorum(where, fields))
        elif kind == "protect":
            if len(fields) != 1 or not fields[0]:
                raise ConfigError(f"{where}: a 'protect' line names one environment pattern")
            protected.append(fields[0])
        else:
            raise ConfigError(
                f"{where}: a line starts with 'p' (a rule), 'g' (a role), 'q' (a quorum) or"
                f" 'protect', not {kind!r}: {line!r}"
            )
        if (earlier := seen.setdefault((kind, *fields), number)) != number:
            raise ConfigError(f"{where}: repeats line {earlier}: {line!r}")
    return PolicyLines(rules, links, quorums, protected)


MAX_QUORUM = 10


def _parse_quorum(where: str, fields: list[str]) -> Quorum:
    if len(fields) != 4 or not all(fields):
        raise ConfigError(
            f"{where}: a 'q' line has 4 non-empty fields after 'q' (environment, action,"
            f" resource, approvals); got {fields!r}"
        )
    environment, action, resource, count = fields
    if not count.isdigit() or not 1 <= int(count) <= MAX_QUORUM:
        raise ConfigError(
            f"{where}: approvals {count!r} must be a whole number from 1 to {MAX_QUORUM}"
        )
    if (canonical := canonical_resource(resource)) != resource:
        raise ConfigError(
            f"{where}: resource {resource!r} would never match a normalised request;"
            f" write {canonical!r}"
        )
    return Quorum(environment, action, resource, int(count))


def _check_subject(where: str, subject: str, prefixes: tuple[str, ...], what: str) -> None:
    prefix = next((p for p in prefixes if subject.startswith(p)), None)
    if prefix is None or subject == prefix or "*" in subject:
        raise ConfigError(
            f"{where}: {what} {subject!r} must be a name prefixed with "
            + " or ".join(repr(p) for p in prefixes)
            + " (no wildcards)"
        )


def _parse_rule(where: str, fields: list[str]) -> Rule:
    if len(fields) != 6 or not all(fields):
        raise ConfigError(
            f"{where}: a 'p' rule has 6 non-empty fields after 'p' (subject, "
            f"environment, action, resource, verb, effect); got {fields!r}"
        )
    subject, environment, action, resource, verb_text, effect_text = fields
    _check_subject(where, subject, SUBJECT_PREFIXES, "subject")
    if (verb := _RULE_VERBS.get(verb_text)) is None:
        raise ConfigError(f"{where}: verb {verb_text!r} is not 'run', 'request', 'approve' or '*'")
    if (effect := _EFFECTS.get(effect_text)) is None:
        raise ConfigError(f"{where}: effect {effect_text!r} is not 'allow' or 'deny'")
    if verb == "*" and effect == "allow":
        raise ConfigError(
            f"{where}: verb '*' is only allowed in deny rules; "
            "grant 'run', 'request' and 'approve' on separate lines"
        )
    if (canonical := canonical_resource(resource)) != resource:
        raise ConfigError(
            f"{where}: resource {resource!r} would never match a normalised "
            f"request; write {canonical!r}"
        )
    return Rule(subject, environment, action, resource, verb, effect)


def _parse_link(where: str, fields: list[str]) -> tuple[str, str, str]:
    if len(fields) != 3 or not all(fields):
        raise ConfigError(
            f"{where}: a 'g' line has 3 non-empty fields after 'g' (member, "
            f"role or group, environment); got {fields!r}"
        )
    member, role, environment = fields
    _check_subject(where, member, SUBJECT_PREFIXES, "member")
    _check_subject(where, role, ROLE_PREFIXES, "role")
    if member == role:
        raise ConfigError(f"{where}: {member!r} cannot be a member of itself")
    return member, role, environment
