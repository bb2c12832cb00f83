"""structlog configuration: key-value events, secrets masked, JSON in production.

``LAM_LOG_FORMAT=json`` writes one JSON object per line (for a log pipeline);
``console`` (the default) writes readable lines for a person at a terminal. Both carry
what the code bound to the context: the request id in the engine and the workers, the
delivery's ids in the Slack front. Lines from libraries that log through the standard
``logging`` module (aiohttp, asyncio, bolt, redis) get the same format, so a JSON log
holds nothing but JSON; theirs show from warnings up, or everything at ``debug``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from bot.audit import Redactor

_handler: logging.Handler | None = None
"""The handler LAM put on the root logger, replaced when logging is configured again."""


def configure_logging(*, log_format: str, level: str, redactor: Redactor) -> None:
    """Route every log line, structlog's and the standard library's, to stderr, masked.

    Logs go to stderr so that ``--json`` output on stdout stays machine-readable.
    ``redactor`` masks values under secret-looking keys, and every configured secret
    anywhere in the finished line (a traceback, a nested value); secrets it learns later
    (the connectors') are masked from then on.
    """
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )

    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        line = renderer(logger, method, event_dict)
        return redactor.text(line if isinstance(line, str) else str(line))

    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.WARNING)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            redactor,
            render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_standard_logging(render, redactor, threshold, timestamper)


def _route_standard_logging(
    render: structlog.typing.Processor,
    redactor: Redactor,
    threshold: int,
    timestamper: structlog.typing.Processor,
) -> None:
    global _handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,
                render,
            ],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    # Libraries' info lines (casbin printing its model, every HTTP request of a client)
    # say nothing an operator needs; they show at debug.
    root.setLevel(threshold if threshold <= logging.DEBUG else max(threshold, logging.WARNING))
    _handler = handler
