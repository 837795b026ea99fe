"""Logging set-up, shared by the command line and the worker processes it starts."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["setup_logging"]

LEVEL_VARIABLE = "FAILOVER_LOG_LEVEL"


class _AbortedFilter(logging.Filter):
    """uvicorn logs any exception that ends a response with a traceback. An origin breaking
    off a response is already logged by the proxy in one line; drop the duplicate."""

    def filter(self, record: logging.LogRecord) -> bool:
        from .proxy import ResponseAborted

        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ResponseAborted)


def setup_logging(level: str | None = None) -> None:
    """Plain lines on stderr. Worker processes, started by uvicorn, call this without a level
    and take the one the command line was given (through the environment)."""
    level = level or os.environ.get(LEVEL_VARIABLE, "info")
    os.environ[LEVEL_VARIABLE] = level
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("uvicorn.error").addFilter(_AbortedFilter())
