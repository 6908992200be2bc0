"""structlog set-up: JSON lines for machines, a console renderer for people.

stdlib logging (watchdog logs through it) is routed through the same processors, so
every line on stdout has the same shape.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Literal

import structlog

LogFormat = Literal["json", "console"]

# Called before each log line is written: the terminal progress line ends itself there,
# so a log line never lands on the same terminal line as the progress text.
_before_output: list[Callable[[], None]] = []


def before_output(callback: Callable[[], None] | None) -> None:
    """Register the one callback run before every log line (None: none)."""
    _before_output[:] = [] if callback is None else [callback]


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    def emit(self, record: logging.LogRecord) -> None:
        for callback in _before_output:
            callback()
        super().emit(record)


def default_format() -> LogFormat:
    return "console" if sys.stdout.isatty() else "json"


def configure(fmt: LogFormat | None = None, verbose: bool = False) -> None:
    fmt = fmt or default_format()
    level = logging.DEBUG if verbose else logging.INFO
    shared: list = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)))
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = _Handler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # watchdog is chatty at DEBUG; its warnings (queue overflow) still come through.
    logging.getLogger("watchdog").setLevel(logging.INFO if verbose else logging.WARNING)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
