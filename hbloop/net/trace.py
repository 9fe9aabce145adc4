"""``-v``: a debug line for every frame in and out, to follow a conversation.

Each line names the direction, the other end, the frame type and the payload length,
and for CLOSE and ERROR the code (an ERROR's message too, as a peer wrote it, as one
token: ``hbloop.core.logfields.token``). Never a payload: not DATA, not a HELLO's
credential. In JSON logs the same is in the fields ``dir``, ``peer``, ``type``,
``length`` and ``code``::

    frame in 127.0.0.1:40312 PING len=0
    frame out 127.0.0.1:40312 PONG len=0
    frame in 127.0.0.1:40312 CLOSE len=2 code=NORMAL

Tracing is chosen once per connection, never per frame: an endpoint made with
``trace=True`` (``hbloop.Server``, ``hbloop.Client``) gives each of its channels a
``Tracer``, which the channel hands every chunk of plaintext it reads and every frame
it writes. Without one the channel's per-frame path tests ``tracer is None`` once in
each direction and calls nothing (tests/test_trace.py counts its bytecodes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

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


class Tracer:
    """One connection's trace: ``label`` names the other end ("host:port") in each line.

    ``received`` takes the plaintext as it is read, split anywhere, and logs each frame
    once its last byte is in (its own decoder buffers the rest: a cost paid only while
    tracing); after a header the session refuses, it logs the frames before it and
    nothing more. ``sent`` takes whole frames: the session's output or one DATA frame.
    """

    __slots__ = ("label", "_decoder")

    def __init__(self, label: str) -> None:
        self.label = label
        self._decoder: FrameDecoder | None = FrameDecoder(ABSOLUTE_MAX_PAYLOAD)

    def received(self, data: bytes | memoryview) -> None:
        decoder = self._decoder
        if decoder is None:
            return
        try:
            frames = decoder.feed(data)
        except RemoteProtocolError as exc:  # the session answers it with ERROR
            self._decoder = None
            frames = exc.frames
        trace_frames(IN, self.label, frames)

    def sent(self, data: bytes) -> None:
        trace_frames(OUT, self.label, FrameDecoder(ABSOLUTE_MAX_PAYLOAD).feed(data))
