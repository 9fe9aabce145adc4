"""``-v``: a debug line for every frame in and out, to follow a conversation.

Each line names the direction, the other end, the frame type and the payload length,
and for CLOSE and ERROR the code (an ERROR's message too, as a peer wrote it, as one
token: ``hbloop.core.logfields.token``). Never a payload: not DATA, not a HELLO's
credential. In JSON logs the same is in the fields ``dir``, ``peer``, ``type``,
``length`` and ``code``::

    frame in 127.0.0.1:40312 PING len=0
    frame out 127.0.0.1:40312 PONG len=0
    frame in 127.0.0.1:40312 CLOSE len=2 code=NORMAL

Tracing is chosen once per connection object, never per frame: an endpoint made with
``trace=True`` (``hbloop.Server``, ``hbloop.Client``) makes its connections of a class
that puts ``TracingChannel`` before its own (``TracingPeer``, ``TracingConnection``).
``TracingChannel`` overrides the three places frames pass through (``_process`` and
``_refuse_input`` in, ``_write`` out), logs, and calls the plain method. Without it the
plain classes run, and the per-frame path holds no check for tracing at all
(tests/test_trace.py counts its bytecodes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from hbloop.core.logfields import fields, token
from hbloop.core.protocol import (
    Frame,
    FrameDecoder,
    RemoteProtocolError,
    code_name,
    parse_close,
    parse_error,
)
from hbloop.core.wire import ABSOLUTE_MAX_PAYLOAD, T_CLOSE, T_ERROR, FrameType
from hbloop.net.channel import Channel, OwnerT

log = logging.getLogger("hbloop.trace")

IN = "in"
OUT = "out"


def _code(ftype: int, payload: bytes) -> tuple[str | None, str]:
    """The code of a CLOSE or ERROR, by name, and the words that say it (with an
    ERROR's message); no code for other frames."""
    try:
        if ftype == T_CLOSE:
            name = code_name(parse_close(payload))
            return name, f" code={name}"
        if ftype == T_ERROR:
            code, message = parse_error(payload)
            name = code_name(code)
            return name, f" code={name} message={token(message)}"
    except RemoteProtocolError as exc:  # the session answers it; the trace says so
        return None, f" malformed ({exc.code.name})"
    return None, ""


def trace_frames(direction: str, peer: str, frames: Iterable[Frame]) -> None:
    """Log one debug line per frame."""
    for ftype, payload in frames:
        kind = FrameType(ftype).name
        code, words = _code(ftype, payload)
        log.debug(
            "frame %s %s %s len=%d%s",
            direction,
            peer,
            kind,
            len(payload),
            words,
            extra=fields(
                event="frame", dir=direction, peer=peer, type=kind, length=len(payload), code=code
            ),
        )


class TracingChannel(Channel[OwnerT]):
    """A Channel that logs its frames; put it first among the bases of a traced class
    (``class TracingPeer(TracingChannel["Server"], Peer)``), so that it sees the frames
    a subclass's own methods would handle. That class supplies ``label``."""

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def label(self) -> str:
            """How the log names the other end ("host:port")."""

    def _process(self, frames: list[Frame]) -> bool:
        trace_frames(IN, self.label, frames)
        return super()._process(frames)

    def _refuse_input(self, error: RemoteProtocolError) -> None:
        trace_frames(IN, self.label, error.frames)  # the good frames before the bad header
        super()._refuse_input(error)

    def _write(self, data: bytes) -> bool:
        # What is written is whole frames: the session's output or one DATA frame.
        trace_frames(OUT, self.label, FrameDecoder(ABSOLUTE_MAX_PAYLOAD).feed(data))
        return super()._write(data)
