"""Process logging: ``text`` for people, ``json`` (one object per line) for log collectors.

Records made while a step attempt runs carry its ``run_id``, ``dag``, ``step`` and ``attempt``:
the runner wraps each attempt in :func:`attempt_context`, and the formatters read the context
(fields passed with ``extra=`` win). Both formats show them; only JSON makes them fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")
CONTEXT_FIELDS = ("run_id", "dag", "step", "attempt")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # RQ colours some of its messages

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("conveyor_log_context",
                                                                                 default=None)


@contextmanager
def attempt_context(run_id: str, dag: str | None, step: str, attempt: int) -> Iterator[dict[str, Any]]:
    """Tag every record logged inside the block with the attempt; ``dag`` may be bound later (:func:`bind`)."""
    token = _context.set({"run_id": run_id, "dag": dag, "step": step, "attempt": int(attempt)})
    try:
        yield _context.get()  # type: ignore[misc]
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the current attempt context (e.g. ``dag`` once the plan is read); no-op outside one."""
    current = _context.get()
    if current is not None:
        current.update(fields)


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The known context fields of a record: ``extra=`` values first, then the attempt context."""
    bound = _context.get() or {}
    found = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            value = bound.get(name)
        if value not in (None, ""):
            found[name] = value
    return found


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [run_id=... step=... attempt=...]``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        found = context_of(record)
        if not found:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the first line
        suffix = " ".join(f"{k}={v}" for k, v in found.items())
        return f"{head} [{suffix}]{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO), level, logger, message, the context, and exc when any."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _ANSI.sub("", record.getMessage()),
        }
        data.update(context_of(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, default=str, ensure_ascii=False)


def formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use {' or '.join(FORMATS)}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup(level: str | int = "INFO", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Log everything at ``level`` and above to stderr in ``fmt``. Replaces the root logger's handlers, so
    RQ (which adds its own only when none exists) logs through it too. Returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
