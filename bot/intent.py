"""Intent understanding: the goal of a request, its environment, dry-run, and context."""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.errors import InvalidInput
from bot.models import Intent, Request
from bot.text import normalise

ENVIRONMENT_ALIASES = {
    "production": "prod",
    "prd": "prod",
    "stage": "staging",
    "stg": "staging",
    "development": "dev",
    "develop": "dev",
}

# "in prod", "on the staging environment", "against production", "(prod)".
ENVIRONMENT_PHRASE = re.compile(
    r"(?:\b(?:in|on|to|for|against|at)\s+(?:the\s+)?(?P<env>[a-z][a-z0-9-]*)"
    r"(?:\s+(?:environment|env|cluster))?\b|\((?P<paren>[a-z][a-z0-9-]*)\))",
    re.IGNORECASE,
)
DRY_RUN_PHRASE = re.compile(
    r"--dry-run\b|\bdry[\s-]?run(?:\s+of)?\b|^\s*what\s+would\s+happen\s+if\s+(?:i|we|you)?\s*",
    re.IGNORECASE,
)
POLITE_PREFIX = re.compile(r"^(?:(?:please|pls|can you|could you|would you)\s+)+", re.IGNORECASE)


def understand(
    request: Request, *, environments: Sequence[str], default_environment: str
) -> Intent:
    """Separate what is asked from where and how: environment, dry-run, and context.

    The environment comes from the front when it fixes one (a ``--env`` flag, a channel
    bound to an environment); a request whose text names another one is refused, so a
    channel bound to ``staging`` cannot act on ``prod``.
    """
    text = normalise(request.text, what="the request")
    if not text:
        raise InvalidInput("the request is empty; say what you need, e.g. 'disk usage'")

    named, goal = _take_environments(text, environments)
    dry_run, goal = _take_dry_run(goal)
    goal = POLITE_PREFIX.sub("", goal).strip(" .!?")

    if request.environment is not None:
        fixed = normalise(request.environment, what="the environment").lower()
        fixed = ENVIRONMENT_ALIASES.get(fixed, fixed)
        if fixed not in environments:
            raise InvalidInput(
                f"unknown environment {request.environment!r}; known: {', '.join(environments)}"
            )
        if named and named != fixed:
            raise InvalidInput(
                f"the request names environment {named!r} but it was made for {fixed!r};"
                f" ask from a place bound to {named!r}"
            )
        environment, source = fixed, "front"
    elif named:
        environment, source = named, "text"
    else:
        environment, source = default_environment, "default"

    return Intent(
        goal=goal,
        environment=environment,
        environment_source=source,
        dry_run=dry_run or request.dry_run,
        requester=request.requester,
        channel=request.channel,
        thread=request.thread,
    )


def _take_environments(text: str, environments: Sequence[str]) -> tuple[str | None, str]:
    """The one environment the text names (if any), and the text without that phrase."""
    named: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        word = (match.group("env") or match.group("paren")).lower()
        environment = ENVIRONMENT_ALIASES.get(word, word)
        if environment not in environments:
            return match.group(0)
        named.add(environment)
        return " "

    remaining = ENVIRONMENT_PHRASE.sub(replace, text)
    if len(named) > 1:
        raise InvalidInput(
            f"the request names several environments ({', '.join(sorted(named))});"
            " ask for one environment at a time"
        )
    return (named.pop() if named else None), " ".join(remaining.split())


def _take_dry_run(text: str) -> tuple[bool, str]:
    remaining, count = DRY_RUN_PHRASE.subn(" ", text)
    return count > 0, " ".join(remaining.split())
