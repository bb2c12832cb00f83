"""Secrets in connector settings: references resolved at start, never literal values.

``lam.yaml`` names where a secret lives (``env:NAME`` or ``file:/path``), so the file can
be committed and shown. A field typed ``Secret`` resolves the reference when the settings
are validated and holds the value as a ``SecretStr``: it prints as ``**********``, and
``secret_values`` hands every resolved value to the redactor, which masks it in audit
events, logs, Slack messages and LLM prompts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, SecretStr

REFERENCE_HELP = "write env:NAME or file:/path; secret values never go in lam.yaml"


def resolve_reference(value: Any) -> SecretStr:
    """The secret a reference points at; ``ValueError`` says what is missing."""
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a secret must be a reference: {REFERENCE_HELP}")
    scheme, _, target = value.partition(":")
    if scheme == "env" and target:
        resolved = os.environ.get(target)
        if resolved is None:
            raise ValueError(f"environment variable {target} is not set")
        if not resolved:
            raise ValueError(f"environment variable {target} is empty")
        return SecretStr(resolved)
    if scheme == "file" and target:
        try:
            # One trailing newline is how editors and `kubectl create secret` leave files.
            resolved = Path(target).read_text(encoding="utf-8").removesuffix("\n")
        except OSError as error:
            raise ValueError(f"cannot read secret file {target}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"secret file {target} is not UTF-8 text") from None
        if not resolved:
            raise ValueError(f"secret file {target} is empty")
        return SecretStr(resolved)
    # Never echo the value: it may be the secret itself, pasted where a reference belongs.
    raise ValueError(f"a secret must be a reference: {REFERENCE_HELP}")


Secret = Annotated[SecretStr, BeforeValidator(resolve_reference)]
"""A settings field holding a secret, written in ``lam.yaml`` as a reference."""


@runtime_checkable
class HoldsSecretParts(Protocol):
    """Settings whose secrets hold other secrets: the password inside a DSN, or a secret
    sent in another form (base64 for basic auth). Each part can surface on its own."""

    def secret_parts(self) -> list[str]:
        """The secrets inside or derived from the model's secrets, masked on their own too."""
        ...


def secret_values(settings: object) -> list[str]:
    """Every resolved secret in a settings model, however deeply nested."""
    return [secret.get_secret_value() for secret in _secrets_in(settings)]


def _secrets_in(value: object) -> Iterator[SecretStr]:
    if isinstance(value, SecretStr):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets_in(getattr(value, name))
        if isinstance(value, HoldsSecretParts):
            yield from map(SecretStr, value.secret_parts())
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secrets_in(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _secrets_in(item)
