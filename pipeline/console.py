"""The console: one ``logging`` logger per package, one format, set up once per process.

Modules log through ``logging.getLogger(__name__)``; :func:`setup_console` (called by the CLI,
by :func:`pipeline.driver.fit` and by every training worker, which Ray starts as new processes)
gives the ``pipeline`` logger one handler that prints ``[stage] message`` to the current
``sys.stderr``, the stage named after the package (``[train]`` for the training, its driver and
its tracking, ``[tune]`` for sweeps), and ``warning: `` before warnings. The ``pipeline`` logger
does not propagate, so the level Ray gives the root logger of its processes does not hide the
project's own messages, and nothing is printed twice.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["STAGE_OF_PACKAGE", "setup_console"]

# Logger name prefix -> the stage word printed in brackets (first match wins).
STAGE_OF_PACKAGE = (
    ("pipeline.tuning", "tune"), ("pipeline.tune", "tune"), ("pipeline.tracking.trials", "tune"),
    ("pipeline.training", "train"), ("pipeline.driver", "train"), ("pipeline.tracking", "train"),
    ("pipeline.train", "train"),
)


def stage_of(logger_name: str) -> str:
    """The bracketed stage word of a logger: ``pipeline.driver.runner`` -> ``train``."""
    for prefix, stage in STAGE_OF_PACKAGE:
        if logger_name == prefix or logger_name.startswith(prefix + "."):
            return stage
    return logger_name.split(".")[1] if logger_name.startswith("pipeline.") else logger_name


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            message = f"error: {message}"
        elif record.levelno >= logging.WARNING:
            message = f"warning: {message}"
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return f"[{stage_of(record.name)}] {message}"


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is at the time of each message (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def setup_console(level: int = logging.INFO) -> logging.Logger:
    """Give the ``pipeline`` logger its console handler (once per process); returns that logger."""
    logger = logging.getLogger("pipeline")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_ConsoleFormatter())
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
