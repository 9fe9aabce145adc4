"""A framed, non-blocking socket on an EventLoop: the I/O shared by server and client.

The write path follows asyncio's selector transport: ``write`` sends at once when
nothing is pending, keeps the unsent rest in a bytearray, and watches for
writability only while that buffer is non-empty. The read path receives into one
buffer shared by every channel of the process (single-threaded, so that is safe),
which keeps an idle connection's memory to its object and its socket.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass

from hbloop.loop import EventLoop, Timer
from hbloop.policy import next_ping_at
from hbloop.protocol import Frame, FrameDecoder, RemoteProtocolError, code_name, printable
from hbloop.wire import PING_FRAME, Code

# One recv() takes at most this much. Enough for hundreds of coalesced frames or a
# large DATA frame, yet small enough to stay in cache.
READ_CHUNK = 256 * 1024

# "Long ago": one shared float for every channel's never-happened timestamps.
NEVER = float("-inf")

_read_buffer = bytearray(READ_CHUNK)
_read_view = memoryview(_read_buffer)


class Reason(enum.Enum):
    """Why a connection ended; every disconnect has exactly one."""

    PEER_CLOSED = "peer_closed"  # CLOSE frame or FIN from the peer
    PEER_RESET = "peer_reset"  # ECONNRESET, EPIPE or another socket error
    PEER_ERROR = "peer_error"  # the peer sent ERROR
    TIMEOUT = "timeout"  # nothing heard within the timeout
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    PROTOCOL_ERROR = "protocol_error"  # the peer broke the protocol; we sent ERROR
    REFUSED = "refused"  # handshake refused (server full)
    SLOW_CONSUMER = "slow_consumer"  # pending output passed the cap
    SHUTDOWN = "shutdown"  # this side is stopping
    CLOSED_LOCALLY = "closed_locally"  # the application asked


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: Reason
    code: int | None = None  # the protocol code sent or received, if any
    detail: str = ""

    def __str__(self) -> str:
        parts = [self.reason.value]
        if self.code is not None:
            parts.append(code_name(self.code))
        if self.detail:
            parts.append(printable(self.detail))  # a peer's ERROR message, for one
        return " ".join(parts)


class IoCounters:
    """Traffic totals, shared by every channel that reports into them."""

    __slots__ = ("bytes_in", "bytes_out", "frames_in", "frames_out")

    def __init__(self) -> None:
        self.bytes_in = self.bytes_out = self.frames_in = self.frames_out = 0


class Channel:
    """Buffered frame I/O for one socket. Subclasses implement the protocol side:

    * ``frames_received(frames)`` for each read that completed frames;
    * ``connection_lost(disconnect)`` once, when the socket is gone or we gave up.
    """

    __slots__ = (
        "loop",
        "sock",
        "fd",
        "decoder",
        "out",
        "max_pending",
        "last_recv",
        "last_sent",
        "last_ping_out",
        "timer",
        "counters",
        "closing",
        "released",
        "_shutdown_pending",
    )

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        counters: IoCounters,
        max_payload: int,
        max_pending: int,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.decoder = FrameDecoder(max_payload)
        self.out: bytearray | None = None
        self.max_pending = max_pending
        self.last_recv = self.last_sent = loop.now
        self.last_ping_out = NEVER
        self.timer: Timer | None = None
        self.counters = counters
        # closing: we sent our last frame and ignore further input; released: fd closed.
        self.closing = False
        self.released = False
        self._shutdown_pending = False

    # --- subclass hooks --------------------------------------------------------

    def frames_received(self, frames: list[Frame]) -> None:
        raise NotImplementedError

    def connection_lost(self, disconnect: Disconnect) -> None:
        raise NotImplementedError

    def protocol_violated(self, error: RemoteProtocolError) -> None:
        raise NotImplementedError

    # --- reading ---------------------------------------------------------------

    def start_reading(self) -> None:
        # The channel is its own read callback (see __call__): a bound method stored
        # in the loop's table would cost 64 bytes per connection.
        self.loop.add_reader(self.fd, self)

    def on_readable(self) -> None:
        try:
            n = self.sock.recv_into(_read_buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lose(Disconnect(Reason.PEER_RESET, detail=exc.strerror or str(exc)))
            return
        if not n:
            if self.closing:
                self.release()  # the FIN we waited for while lingering
            elif self.decoder.buffered:
                # EOF inside a frame: a truncation, not a split (F4). The peer may only
                # have half-closed, so it can still read why.
                self.protocol_violated(
                    RemoteProtocolError(
                        Code.MALFORMED, f"EOF inside a frame, {self.decoder.buffered} bytes in"
                    )
                )
            else:
                self.lose(Disconnect(Reason.PEER_CLOSED, detail="EOF"))
            return
        if self.closing:
            return  # draining input until the peer's FIN, see arm_linger
        self.counters.bytes_in += n
        violation = None
        try:
            frames = self.decoder.feed(_read_view[:n])
        except RemoteProtocolError as exc:
            frames = exc.frames  # the good frames before the bad header still count
            violation = exc
        if frames:
            self.last_recv = self.loop.now
            self.counters.frames_in += len(frames)
            self.frames_received(frames)
        if violation is not None and not self.closing:
            self.protocol_violated(violation)

    __call__ = on_readable

    # --- writing ---------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Queue ``data``; return False if the channel was closed instead."""
        if self.released:
            return False
        self.last_sent = self.loop.now
        counters = self.counters
        counters.bytes_out += len(data)
        counters.frames_out += 1
        out = self.out
        if out:
            out += data
            if len(out) > self.max_pending:
                self.lose(Disconnect(Reason.SLOW_CONSUMER, detail=f"{len(out)} bytes pending"))
                return False
            return True
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.lose(Disconnect(Reason.PEER_RESET, detail=exc.strerror or str(exc)))
            return False
        if sent < len(data):
            if len(data) - sent > self.max_pending:
                self.lose(Disconnect(Reason.SLOW_CONSUMER, detail="frame exceeds pending cap"))
                return False
            self.out = bytearray(data[sent:]) if sent else bytearray(data)
            self.loop.add_writer(self.fd, self.on_writable)
        return True

    def on_writable(self) -> None:
        out = self.out
        if not out:
            self.loop.remove_writer(self.fd)
            return
        try:
            sent = self.sock.send(out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lose(Disconnect(Reason.PEER_RESET, detail=exc.strerror or str(exc)))
            return
        del out[:sent]
        if not out:
            self.out = None
            self.loop.remove_writer(self.fd)
            if self._shutdown_pending:
                self._shutdown_write()

    def ping_if_due(self, interval: float) -> float | None:
        """For the pinging side (protocol.md T3): send a PING if one is due now.

        Returns when the next PING is due, or None if the channel died sending it.
        """
        now = self.loop.now
        ping_at = next_ping_at(self.last_sent, self.last_recv, self.last_ping_out, interval)
        if now >= ping_at:
            if not self.write(PING_FRAME):
                return None
            self.last_ping_out = now
            ping_at = now + interval
        return ping_at

    # --- ending ----------------------------------------------------------------

    def finish(self, last_frame: bytes, linger: float) -> None:
        """Send ``last_frame`` (CLOSE or ERROR), half-close once it is flushed, and
        wait up to ``linger`` seconds for the peer's FIN before releasing the socket.

        Closing with unread input would make the kernel answer with RST, which can
        destroy the frame in flight; half-closing first lets the peer read it.
        """
        if self.closing or self.released:
            return
        self.closing = True  # first, so that a failing write does not report twice
        if not self.write(last_frame):
            return
        if self.out:
            self._shutdown_pending = True
        else:
            self._shutdown_write()
        if not self.released:
            self.arm_linger(linger)

    def _shutdown_write(self) -> None:
        self._shutdown_pending = False
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.release()

    def arm_linger(self, linger: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(self.loop.now + linger, self.release)

    def lose(self, disconnect: Disconnect) -> None:
        """The connection is gone (or hopeless): release it at once and report it,
        unless we were already ending it, in which case the end was reported then."""
        if self.released:
            return
        already_ending = self.closing
        self.release()
        if not already_ending:
            self.connection_lost(disconnect)

    def release(self) -> None:
        """Close the socket and drop every loop registration. Idempotent."""
        if self.released:
            return
        self.released = True
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.loop.forget_fd(self.fd)
        self.out = None
        self.sock.close()
