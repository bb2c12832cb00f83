"""What an http action reports: the response decoded, pruned to ``keep``, and readable.

A JSON response becomes ``ActionResult.data`` (only the ``keep`` paths when set) and a
``key.path: value`` rendering as the output; a text response is the output as is. A body
that is not valid text in its charset, or that says it is JSON and is not, fails clearly
rather than reaching the planner as mojibake.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from pydantic import JsonValue

from bot.errors import ActionFailed
from connectors._egress import Received
from connectors.base import ActionResult

MAX_LINES = 200
EXCERPT_CHARS = 300
REDACTED = "***"
_MISSING = object()


def result(received: Received, keep: Sequence[str], *, context: str) -> ActionResult:
    """The action's result for a 2xx response."""
    status = f"{received.status} {received.reason}".strip()
    if not received.body:
        return ActionResult(output=status, data=None)
    mime, charset = _content_type(received)
    try:
        text = received.body.decode(charset)
    except LookupError:
        raise ActionFailed(f"{context}: the response uses unknown charset {charset!r}") from None
    except UnicodeDecodeError as error:
        raise ActionFailed(
            f"{context}: the response ({mime or 'no Content-Type'}) is not valid {charset}"
            f" text (bad byte at offset {error.start}); only JSON and text responses are"
            " supported"
        ) from None
    is_json = mime == "application/json" or mime.endswith("+json")
    if not is_json:
        if keep:
            raise ActionFailed(
                f"{context}: 'keep' needs a JSON response, but it is {mime or 'untyped'}"
            )
        return ActionResult(output=f"{status}\n{text}", data=None)
    try:
        value: JsonValue = json.loads(text)
    except ValueError as error:
        raise ActionFailed(f"{context}: the response says it is JSON but is not: {error}") from None
    if keep:
        value = kept(value, keep)
    return ActionResult(output=f"{status}\n{render(value)}", data=value)


def _content_type(received: Received) -> tuple[str, str]:
    header = received.headers.get("Content-Type", "")
    mime, _, parameters = header.partition(";")
    match = re.search(r"charset=\"?([A-Za-z0-9._-]+)", parameters)
    return mime.strip().lower(), match[1].lower() if match else "utf-8"


def excerpt(received: Received, limit: int = EXCERPT_CHARS) -> str:
    """The start of a body, on one line, for an error message."""
    text = " ".join(received.body.decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[:limit] + "…"


def kept(value: JsonValue, paths: Sequence[str]) -> JsonValue:
    """Only the parts of ``value`` that ``paths`` name, in the same nesting.

    A path is dotted object keys; ``*`` steps into every item of a list. A path that names
    nothing in this response is left out.
    """
    result: JsonValue = None
    for path in paths:
        picked = _pick(value, path.split("."))
        if picked is not _MISSING:
            result = _merge(result, picked)  # type: ignore[arg-type]
    return result


def _pick(value: JsonValue, parts: list[str]) -> JsonValue | object:
    if not parts:
        return value
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict) and head in value:
        picked = _pick(value[head], rest)
        return _MISSING if picked is _MISSING else {head: picked}
    if isinstance(value, list) and head == "*":
        items = [_pick(item, rest) for item in value]
        return [None if item is _MISSING else item for item in items]
    return _MISSING


def _merge(old: JsonValue, new: JsonValue) -> JsonValue:
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merge(old.get(k), v) for k, v in new.items()}}
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [_merge(a, b) for a, b in zip(old, new, strict=True)]
    return new if old is None else (old if new is None else new)


def render(value: JsonValue) -> str:
    """``a.b: value`` lines; lists of scalars on one line; at most ``MAX_LINES`` lines."""
    lines: list[str] = []
    _flatten(value, "", lines)
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], f"… {len(lines) - MAX_LINES} more lines"]
    return "\n".join(lines)


def _flatten(value: JsonValue, prefix: str, lines: list[str]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else key, lines)
    elif isinstance(value, list) and value and not all(_scalar(item) for item in value):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}.{index}" if prefix else str(index), lines)
    else:
        shown = _show(value)
        lines.append(f"{prefix}: {shown}" if prefix else shown)


def _scalar(value: JsonValue) -> bool:
    return not isinstance(value, dict | list)


def _show(value: JsonValue) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(_show(item) for item in value) if value else "[]"
    return json.dumps(value, ensure_ascii=False)


def redact(value: JsonValue, secrets: Sequence[str]) -> JsonValue:
    """``value`` with every occurrence of each secret replaced, however deep."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {redact_text(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(item, secrets) for item in value]
    return value


def redact_text(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text
