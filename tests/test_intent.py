"""Intent understanding: environment, dry-run, goal and context from a request."""

from __future__ import annotations

import pytest

from bot.errors import InvalidInput
from bot.intent import understand
from bot.models import Intent, Request

ENVIRONMENTS = ("dev", "staging", "prod")


def intent_of(text: str, **fields: object) -> Intent:
    request = Request.model_validate({"text": text, "requester": "user:alice", **fields})
    return understand(request, environments=ENVIRONMENTS, default_environment="dev")


@pytest.mark.parametrize(
    ("text", "environment", "goal"),
    [
        ("restart web in prod", "prod", "restart web"),
        ("restart web on the staging environment", "staging", "restart web"),
        ("please restart web in production", "prod", "restart web"),
        ("disk usage (staging)", "staging", "disk usage"),
        ("disk usage", "dev", "disk usage"),
        ("restart web in ｐｒｏｄ", "prod", "restart web"),
    ],
)
def test_environment_is_taken_from_the_text(text: str, environment: str, goal: str) -> None:
    """A named environment (aliases and fullwidth lookalikes included) is found and removed."""
    intent = intent_of(text)
    assert intent.environment == environment
    assert intent.goal == goal


def test_unknown_word_after_in_is_left_in_the_goal() -> None:
    """'in' followed by something that is not an environment stays part of the goal."""
    intent = intent_of("tail 20 lines of /var/log/syslog in detail")
    assert intent.environment == "dev"
    assert intent.goal == "tail 20 lines of /var/log/syslog in detail"


@pytest.mark.parametrize(
    "text",
    ["dry run restart web", "restart web --dry-run", "what would happen if I restart web"],
)
def test_dry_run_phrases_set_dry_run(text: str) -> None:
    """Every dry-run phrasing sets dry_run and is removed from the goal."""
    intent = intent_of(text)
    assert intent.dry_run is True
    assert intent.goal == "restart web"


def test_front_environment_wins_and_conflicts_are_refused() -> None:
    """An environment fixed by the front is used, and text naming another one is refused."""
    assert intent_of("restart web", environment="staging").environment == "staging"
    with pytest.raises(
        InvalidInput, match="names environment 'prod' but it was made for 'staging'"
    ):
        intent_of("restart web in prod", environment="staging")


def test_several_environments_are_refused() -> None:
    """A request naming two environments is refused rather than guessed."""
    with pytest.raises(InvalidInput, match="several environments"):
        intent_of("restart web in prod and in staging")


def test_unknown_front_environment_is_refused() -> None:
    """A --env value that is not configured names the known ones."""
    with pytest.raises(InvalidInput, match="unknown environment 'qa'; known: dev, staging, prod"):
        intent_of("disk usage", environment="qa")


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("restart web\u200b in prod", "ZERO WIDTH SPACE"),
        ("restart \u202eweb in prod", "RIGHT-TO-LEFT OVERRIDE"),
        ("restart web\U000e0041", "TAG LATIN CAPITAL LETTER A"),
    ],
)
def test_invisible_characters_are_refused(text: str, name: str) -> None:
    """Zero-width, bidi-override and tag characters are refused, naming the character."""
    with pytest.raises(InvalidInput, match=name):
        intent_of(text)


def test_context_is_kept() -> None:
    """Requester, channel and thread travel with the intent."""
    intent = intent_of("disk usage", channel="C1", thread="1.2")
    assert (intent.requester, intent.channel, intent.thread) == ("user:alice", "C1", "1.2")
