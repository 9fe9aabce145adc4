"""Log fields: the convention every layer uses to attach structured fields to a record
(``log.info(message, extra=fields(peer=..., name=...))``), which ``hbloop.ops.logs``
writes out in the JSON format; and how text a peer controls is written into a text
line (``token`` for a name or another field's value, ``trailing_text`` for free text
that ends a line), so that it can never pass for fields of its own."""

from __future__ import annotations

import re
from typing import Any

from hbloop.core.protocol import printable

# The LogRecord attribute holding a record's structured fields.
FIELDS_ATTRIBUTE = "hbloop_fields"

# A value written bare: no whitespace (which would end it), no '=' (which would make
# it read as a field), no quote or backslash (which quoting gives a meaning). Anything
# else is quoted, and unsafe characters are escaped either way (``printable``).
_BARE_TOKEN = re.compile(r'[^\s="\\]+')

# Free text at the end of a line may have spaces; it is quoted only if it could be
# read as fields (an '=') or as a quoted value.
_FIELD_LIKE = re.compile(r'[="]')


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """``extra=`` for a log call whose record carries structured fields."""
    return {FIELDS_ATTRIBUTE: values}


def _quoted(text: str) -> str:
    # printable doubles every backslash first, so each \\" below comes from a quote.
    return '"' + printable(text).replace('"', '\\"') + '"'


def token(text: str) -> str:
    """``text`` (a name, an ERROR message...) as one token of a text log line: bare
    when it is plain (``alice``), else quoted with its quotes, backslashes and unsafe
    characters escaped (``"bob age=999.0s"``), so that ``name=%s`` is always exactly
    one field."""
    if text.isprintable() and _BARE_TOKEN.fullmatch(text):
        return text
    return _quoted(text)


def trailing_text(text: str) -> str:
    """``text`` from a peer at the end of a line, after the fields (the detail of a
    ``reason=``): as it is when it cannot pass for fields (``1000 connections``), else
    quoted as ``token`` quotes; unsafe characters escaped either way."""
    if _FIELD_LIKE.search(text):
        return _quoted(text)
    return printable(text)
