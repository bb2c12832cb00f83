"""The offline planner: each action's example phrasings, with typed ``{slots}``, as patterns.

It is the idea of StackStorm's action aliases. ``restart {service}`` matches "restart
web" with ``service="web"``; the slot values are validated by the action's ``Params``.
Several clauses joined by "then" become several steps, each depending on the one before.
``run <connector.action> key=value ...`` names an action explicitly.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from pydantic import JsonValue

from bot.errors import InvalidInput, NoPlan
from bot.models import Intent, Plan, Step
from bot.planning.references import check_references, validate_arguments
from connectors import Action, Catalog

CLAUSE_SEPARATOR = re.compile(r"\s*(?:;|,?\s+(?:and\s+)?then\s+)\s*", re.IGNORECASE)
SLOT = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
SLOT_VALUE = r"\"[^\"]*\"|'[^']*'|\S+"
EXPLICIT = re.compile(r"^run\s+([a-z][\w-]*\.[\w.-]+)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Phrasing:
    action: Action
    template: str

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        parts: list[str] = []
        position = 0
        for match in SLOT.finditer(self.template):
            parts.append(_literal(self.template[position : match.start()]))
            parts.append(f"(?P<{match.group(1)}>{SLOT_VALUE})")
            position = match.end()
        parts.append(_literal(self.template[position:]))
        return re.compile("^" + "".join(parts) + "$", re.IGNORECASE)

    @property
    def specificity(self) -> int:
        """Literal characters in the template: the more, the more specific the match."""
        return len(SLOT.sub("", self.template).replace(" ", ""))

    def match(self, clause: str) -> dict[str, str] | None:
        found = self.pattern.match(clause)
        if found is None:
            return None
        return {name: _unquote(value) for name, value in found.groupdict().items()}


def _literal(text: str) -> str:
    """A template's literal text as a pattern that tolerates any run of whitespace."""
    return r"\s+".join(re.escape(word) for word in text.split(" ")) if text else ""


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


class AliasPlanner:
    """Plans from example phrasings; never guesses: no match means no plan."""

    name = "aliases"

    async def plan(self, intent: Intent, catalog: Catalog) -> Plan:
        clauses = [c for c in CLAUSE_SEPARATOR.split(intent.goal) if c.strip()]
        if not clauses:
            raise InvalidInput("the request is empty; say what you need, e.g. 'disk usage'")
        steps: list[Step] = []
        for index, clause in enumerate(clauses, start=1):
            action, args = self._resolve(clause.strip(), catalog)
            step_id = f"s{index}"
            # "${s1.output}" refers to an earlier step's result: checked now, resolved
            # and validated again right before the step runs.
            check_references(step_id, args, [step.id for step in steps])
            checked, resource = validate_arguments(action, args)
            steps.append(
                Step(
                    id=step_id,
                    action=action.id,
                    args=checked,
                    environment=intent.environment,
                    resource=resource,
                    risk=action.risk,
                    depends_on=(steps[-1].id,) if steps else (),
                )
            )
        return Plan(steps=tuple(steps), planner=self.name, dry_run=intent.dry_run)

    async def revise(
        self,
        intent: Intent,
        catalog: Catalog,
        plan: Plan,
        failure: str,
        *,
        succeeded: Sequence[str] = (),
    ) -> Plan | None:
        """``None``: phrasings cannot read an error, so a failed plan is not revised."""
        return None

    async def aclose(self) -> None:
        """Nothing to release: phrasings are matched in memory."""

    def _resolve(self, clause: str, catalog: Catalog) -> tuple[Action, dict[str, JsonValue]]:
        explicit = EXPLICIT.match(clause)
        if explicit:
            return catalog.get(explicit.group(1)), _key_values(explicit.group(2) or "")
        matches = [
            (phrasing, slots)
            for phrasing in _phrasings(catalog)
            if (slots := phrasing.match(clause)) is not None
        ]
        if not matches:
            raise NoPlan(
                f"I don't know how to {clause!r}; nothing was run.",
                suggestions(clause, catalog),
            )
        best = max(phrasing.specificity for phrasing, _ in matches)
        top = [(p, s) for p, s in matches if p.specificity == best]
        if len({phrasing.action.id for phrasing, _ in top}) > 1:
            raise NoPlan(
                f"{clause!r} could mean several actions; nothing was run. Say which one,"
                " e.g. with 'run <action> key=value'.",
                [f"{p.action.id}: e.g. {p.template!r}" for p, _ in top],
            )
        phrasing, slots = top[0]
        return phrasing.action, dict(slots)


def _phrasings(catalog: Catalog) -> Iterator[Phrasing]:
    for action in catalog:
        for template in action.examples:
            yield Phrasing(action, " ".join(template.split()))


def _key_values(text: str) -> dict[str, JsonValue]:
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise InvalidInput(f"cannot read the arguments {text!r}: {error}") from error
    args: dict[str, JsonValue] = {}
    for word in words:
        key, equals, value = word.partition("=")
        if not equals or not key:
            raise InvalidInput(f"argument {word!r} is not of the form key=value")
        if key in args:
            raise InvalidInput(f"argument {key!r} is given twice")
        args[key] = value
    return args


def suggestions(text: str, catalog: Catalog, limit: int = 3) -> list[str]:
    """The actions whose phrasings read most like ``text``, each with an example."""
    scored: dict[str, tuple[float, str]] = {}
    for phrasing in _phrasings(catalog):
        plain = SLOT.sub(lambda m: m.group(1), phrasing.template)
        score = difflib.SequenceMatcher(None, text.lower(), plain.lower()).ratio()
        words = set(text.lower().split()) & set(plain.lower().split())
        score += 0.2 * len(words)
        best = scored.get(phrasing.action.id)
        if best is None or score > best[0]:
            scored[phrasing.action.id] = (score, phrasing.template)
    ranked = sorted(scored.items(), key=lambda item: item[1][0], reverse=True)
    return [f"{action_id}: e.g. {template!r}" for action_id, (_, template) in ranked[:limit]]
