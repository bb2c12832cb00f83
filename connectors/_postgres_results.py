"""Rows from PostgreSQL as JSON a later step can use, and as a table a person can read."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from pydantic import JsonValue

CELL_WIDTH = 120
"""Characters of one value shown in the table; the data keeps the whole value."""
NULL = "NULL"
FOOTER_ROOM = 400
"""Bytes of the output limit kept for the footer under the table."""


def json_safe(value: Any) -> JsonValue:
    """A value psycopg loaded, as JSON that keeps its meaning.

    Numerics become strings so no digit is lost to a float; bytes become PostgreSQL's
    hex form; anything else without a JSON form (uuid, inet, ranges, intervals) its text.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    return str(value)


def json_size(value: JsonValue) -> int:
    """Bytes of ``value`` as compact JSON, the way the executor measures data."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def rows_within(
    columns: list[str], rows: Sequence[Sequence[Any]], limit_bytes: int
) -> list[list[JsonValue]]:
    """The leading rows, made JSON-safe, whose data stays under ``limit_bytes``."""
    kept: list[list[JsonValue]] = []
    # The 200 bytes leave room for the other keys of the data (command, row_count, ...).
    size = json_size({"columns": list[JsonValue](columns), "rows": []}) + 200
    for row in rows:
        safe = [json_safe(value) for value in row]
        size += json_size(safe) + 1
        if size > limit_bytes:
            break
        kept.append(safe)
    return kept


def cell_text(value: Any) -> str:
    """One value on one line, the way the table shows it."""
    if value is None:
        return NULL
    safe = json_safe(value)
    if isinstance(safe, str):
        text = safe
    elif isinstance(safe, bool):
        text = "true" if safe else "false"
    elif isinstance(safe, int | float):
        text = str(safe)
    else:
        text = json.dumps(safe, ensure_ascii=False)
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def render_table(
    columns: list[str], rows: Sequence[Sequence[Any]], limit_bytes: int
) -> tuple[str, int]:
    """An aligned text table of ``rows`` in at most ``limit_bytes``, and how many rows it shows.

    Numbers are right-aligned, like psql does; a long value is cut in the table only.
    """
    cells = [[cell_text(value) for value in row] for row in rows]
    widths = [len(name) for name in columns]
    for row in cells:
        for index, text in enumerate(row):
            widths[index] = max(widths[index], len(text))
    numeric = [
        any(_is_number(row[i]) for row in rows)
        and all(row[i] is None or _is_number(row[i]) for row in rows)
        for i in range(len(columns))
    ]
    header = " | ".join(name.ljust(width) for name, width in zip(columns, widths, strict=True))
    lines = [header.rstrip(), "-+-".join("-" * width for width in widths)]
    used = sum(len(line.encode("utf-8")) + 1 for line in lines)
    shown = 0
    for row in cells:
        line = " | ".join(
            text.rjust(width) if is_number else text.ljust(width)
            for text, width, is_number in zip(row, widths, numeric, strict=True)
        ).rstrip()
        used += len(line.encode("utf-8")) + 1
        if used > limit_bytes:
            break
        lines.append(line)
        shown += 1
    return "\n".join(lines), shown


def count(n: int, noun: str = "row") -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def rows_result(
    summary: str,
    columns: list[str],
    rows: Sequence[Sequence[Any]],
    *,
    row_cap: int,
    limit_bytes: int,
) -> tuple[str, dict[str, JsonValue]]:
    """The output text and data of a statement's rows (up to ``row_cap + 1`` of them).

    The text is ``summary``, the table and a footer saying what was left out and why;
    the data is ``{"columns", "rows", "row_count", "truncated"}``.
    """
    capped = len(rows) > row_cap
    kept = rows[:row_cap]
    data_rows = rows_within(columns, kept, limit_bytes)
    lines = [summary] if summary else []
    shown = len(kept)
    if columns:
        # Room is kept for the summary and the footer under the same limit.
        room = limit_bytes - FOOTER_ROOM - len(summary.encode("utf-8"))
        table, shown = render_table(columns, kept, room)
        lines.append(table)
    notes: list[str] = []
    if capped:
        notes.append(f"row_cap {row_cap} reached, more rows were not fetched: narrow the query")
    if shown < len(kept):
        notes.append(f"the table shows the first {shown} to stay under {limit_bytes} bytes")
    if len(data_rows) < len(kept):
        notes.append(f"the data keeps the first {len(data_rows)} to stay under {limit_bytes} bytes")
    if columns or not summary:
        lines.append(f"({count(len(kept))}" + "".join(f"; {note}" for note in notes) + ")")
    data: dict[str, JsonValue] = {
        "columns": list[JsonValue](columns),
        "rows": list[JsonValue](data_rows),
        "row_count": len(data_rows),
        "truncated": capped or len(data_rows) < len(kept),
    }
    return "\n".join(lines), data
