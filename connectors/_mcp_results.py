"""A tool's ``CallToolResult`` as LAM's output: text joined, other content described.

Text blocks are joined into the output; an image, audio clip or binary resource is
described (``[image/png, 1234 bytes]``), never pasted. ``structuredContent`` becomes the
result's ``data``. The connector's own secrets are masked wherever they appear, and the
output is capped: the SDK has already received the whole result by then, but nothing
past the cap travels further into LAM.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mcp import types
from pydantic import JsonValue

TRUNCATED = "\n[output truncated by the mcp connector: kept the first {kept} of {total} bytes]"
DATA_DROPPED = "\n[structured content of {size} bytes dropped: over the limit of {limit} bytes]"
ERROR_TEXT_LIMIT = 2000
"""Characters of a tool's own error message kept in the failure LAM reports."""

Mask = Callable[[str], str]


def describe_block(block: types.ContentBlock) -> str:
    """One content block as text: the text itself, or what the block holds."""
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        return f"[{block.mimeType}, {_decoded_size(block.data)} bytes]"
    if isinstance(block, types.ResourceLink):
        kind = f", {block.mimeType}" if block.mimeType else ""
        return f"[resource link {block.uri}{kind}]"
    resource = block.resource
    kind = f", {resource.mimeType}" if resource.mimeType else ""
    if isinstance(resource, types.TextResourceContents):
        return f"[resource {resource.uri}{kind}]\n{resource.text}"
    return f"[resource {resource.uri}{kind}, {_decoded_size(resource.blob)} bytes]"


def result_text(result: types.CallToolResult, limit: int, mask: Mask) -> tuple[str, bool]:
    """The blocks joined by newlines, at most ``limit`` bytes of it, and whether it was cut."""
    # Masked before it is cut, so a secret across the cut cannot leave half of itself.
    text = mask("\n".join(describe_block(block) for block in result.content))
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text, False
    kept = encoded[:limit].decode("utf-8", errors="ignore")
    return kept + TRUNCATED.format(kept=limit, total=len(encoded)), True


def result_data(result: types.CallToolResult, limit: int, mask: Mask) -> tuple[JsonValue, str]:
    """The structured content, masked, and a note when it was too big to keep."""
    if result.structuredContent is None:
        return None, ""
    data: JsonValue = _masked(result.structuredContent, mask)
    size = len(json.dumps(data, ensure_ascii=False).encode("utf-8"))
    if size > limit:
        return None, DATA_DROPPED.format(size=size, limit=limit)
    return data, ""


def error_text(result: types.CallToolResult, mask: Mask) -> str:
    """What a tool said when it reported an error, short enough for a message."""
    text, _ = result_text(result, ERROR_TEXT_LIMIT * 4, mask)
    text = text.strip()
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[:ERROR_TEXT_LIMIT] + " [...]"
    return text or "(the tool gave no message)"


def _decoded_size(base64_text: str) -> int:
    """Bytes a base64 text decodes to, without decoding it."""
    digits = len(base64_text.strip().rstrip("="))
    return digits * 3 // 4


def _masked(value: Any, mask: Mask) -> JsonValue:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list):
        return [_masked(item, mask) for item in value]
    if isinstance(value, dict):
        return {mask(str(key)): _masked(item, mask) for key, item in value.items()}
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask(str(value))
