"""Normalising untrusted text, so nothing can pass for something it is not."""

from __future__ import annotations

import re
import unicodedata

from bot.errors import InvalidInput

MAX_REQUEST_CHARS = 4000


def normalise(text: str, *, what: str = "text", max_chars: int = MAX_REQUEST_CHARS) -> str:
    """NFKC-normalise ``text`` and refuse invisible format characters.

    NFKC folds lookalikes such as fullwidth ``ｐｒｏｄ`` into ``prod``. Format characters
    (zero-width spaces and joiners, bidi overrides, tag characters) have no business in a
    request and can make text read differently from what it is, so they are refused
    rather than stripped.
    """
    if len(text) > max_chars:
        raise InvalidInput(f"{what} is {len(text)} characters long; the limit is {max_chars}")
    folded = unicodedata.normalize("NFKC", text)
    for position, char in enumerate(folded):
        category = unicodedata.category(char)
        if category == "Cf":
            name = unicodedata.name(char, f"U+{ord(char):04X}")
            raise InvalidInput(
                f"{what} contains the invisible character {name} (U+{ord(char):04X})"
                f" at position {position}; retype it without hidden characters"
            )
        if category == "Cc" and char not in "\t\n\r":
            raise InvalidInput(
                f"{what} contains the control character U+{ord(char):04X} at position {position}"
            )
    return " ".join(folded.split())


SUBJECT_PREFIXES = ("user:", "group:", "role:")
SUBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/+-]{0,127}$")


def as_subject(name: str) -> str:
    """The policy subject for a person: ``alice`` becomes ``user:alice``.

    A name that is already prefixed keeps its prefix; only ``user:`` subjects can ask
    or approve, so a person can never act as a role or a group.
    """
    text = normalise(name, what="the user name", max_chars=160)
    bare = text.removeprefix("user:")
    if bare.startswith(SUBJECT_PREFIXES) or not SUBJECT_NAME.match(bare):
        raise InvalidInput(
            f"{name!r} is not a valid user name; use letters, digits and . _ @ / + -"
        )
    return f"user:{bare}"
