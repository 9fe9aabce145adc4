"""Structured fields on a log record: the one convention every layer uses to attach
them (``log.info(message, extra=fields(peer=..., name=...))``); ``hbloop.ops.logs``
writes them out in the JSON format."""

from __future__ import annotations

from typing import Any

# The LogRecord attribute holding a record's structured fields.
FIELDS_ATTRIBUTE = "hbloop_fields"


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """``extra=`` for a log call whose record carries structured fields."""
    return {FIELDS_ATTRIBUTE: values}
