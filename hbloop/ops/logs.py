"""The process's log: one line per record on stderr, as text or as JSON.

Both formats are safe against forged lines. Strings a peer controls reach log
messages (an ERROR frame's message, via the disconnect reason), and a newline in one
must not start a line that looks like ours: the text format escapes control, format
and line-separator characters in the message (``protocol.escape_unsafe``), and JSON
escapes them by construction.

A log call may carry structured fields (``extra=fields(peer=..., name=...)``): the JSON
format writes each as a key of its own, beside ``time``, ``level``, ``logger`` and
``message``; the text format shows only the message, which says the same in words.

A worker of ``--workers`` names itself on every line (``name_worker``): ``worker=N``
before the logger in text, a ``worker`` key in JSON; the supervisor's lines have none.
"""

from __future__ import annotations

import copy
import json
import logging
from datetime import UTC, datetime
from typing import Any

from hbloop.core.logfields import FIELDS_ATTRIBUTE
from hbloop.core.protocol import escape_unsafe

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s {worker}%(name)s: %(message)s"

# The one handler this module installs on the root logger; configure() replaces its
# formatter in place, so that SIGHUP can change the format without losing records.
_handler: logging.Handler | None = None

# The index of the worker this process is (name_worker), or None: a lone server, a
# supervisor, a client.
_worker: int | None = None


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, the message escaped onto one line. A traceback
    (ours, not a peer's) follows on lines of its own, as usual."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__(TEXT_FORMAT.format(worker="" if worker is None else f"worker={worker} "))

    def formatMessage(self, record: logging.LogRecord) -> str:
        safe = copy.copy(record)
        safe.message = escape_unsafe(record.message)
        return super().formatMessage(safe)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601, milliseconds), ``level``,
    ``logger``, ``message``, the record's structured fields, and ``exception`` with
    the traceback when there is one; a worker's lines have ``worker``."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        for key, value in getattr(record, FIELDS_ATTRIBUTE, {}).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: U+2028 and friends leave as \u escapes too.
        return json.dumps(entry, default=str)


def configure(level: str, log_format: str) -> None:
    """Log to stderr at ``level`` in ``log_format``; a second call changes both."""
    global _handler
    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler()
        root.addHandler(_handler)
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    _handler.setFormatter(formatter(_worker))
    root.setLevel(getattr(logging, level.upper()))


def name_worker(index: int) -> None:
    """From now on this process is worker ``index``: every line says so, whatever
    ``configure`` is called with later (a SIGHUP's)."""
    global _worker
    _worker = index
