"""structlog configuration: key-value events, secrets masked, JSON in production."""

from __future__ import annotations

import logging
import sys

import structlog

from bot.audit import Redactor


def configure_logging(*, log_format: str, level: str, redactor: Redactor) -> None:
    """Route every structlog event to stderr, masked by ``redactor``.

    Logs go to stderr so that ``--json`` output on stdout stays machine-readable.
    """
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redactor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.WARNING)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
