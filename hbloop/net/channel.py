"""The I/O shell around a Session: one non-blocking socket on an EventLoop.

A ``Channel`` moves bytes and time between the socket, the loop and its
``hbloop.core.session.Session``, and hands the session's events to its subclass (the
server's ``Peer``, the client's ``Connection``, the bench's clients). It decides
nothing about the protocol.

* **Reading.** One ``recv_into`` per readiness into a buffer shared by every channel
  of the process (single-threaded, so that is safe), which keeps an idle
  connection's memory to its objects and its socket. Complete frames go to
  ``session.receive`` with the loop's clock, at most ``MAX_FRAMES_PER_READ`` per
  iteration; a peer with more, or one the session throttles (T9), is not read again
  until its turn comes, so one peer's burst cannot stall the others.
* **Writing** follows asyncio's selector transport: send at once when nothing is
  pending, keep the unsent rest in a bytearray, watch for writability only while that
  buffer is non-empty. While the events of one read are dispatched, output is corked:
  the session's answers and whatever the application sends in its callbacks leave in
  one ``send``.
* **Time.** One loop timer per connection, armed at ``session.next_deadline()`` and
  re-armed only when it fires or the deadline moves earlier (a state change), so a
  heartbeat costs no timer operation.
* **Ending.** When the session is CLOSING its last frame is flushed, then the
  writing half is shut down (TCP FIN), and input is drained until the peer's EOF or
  the linger deadline; CLOSED releases the socket.
* **TLS** is a subclass, ``TlsChannel``, so that a plain channel never asks whether
  it is one: its read callback decrypts, its writes encrypt into the same output
  buffer (the slow-consumer cap counts ciphertext) and its last frame is followed by
  close_notify. The session never knows.
"""

from __future__ import annotations

import socket
from typing import Generic, Protocol, TypeVar

from hbloop.core.protocol import Frame, FrameDecoder, RemoteProtocolError
from hbloop.core.session import (
    FOREVER,
    S_CLOSED,
    S_CLOSING,
    S_OPEN,
    Events,
    Reason,
    Session,
    State,
    Step,
    Throttled,
)
from hbloop.net.counters import IoCounters
from hbloop.net.loop import EventLoop, Timer
from hbloop.net.tls import NotTlsError, TlsError, TlsLayer

# Fairness: what one peer may make the loop do per iteration. One recv() takes at
# most READ_CHUNK bytes (a maximum-size DATA frame at the default --max-frame) and
# at most MAX_FRAMES_PER_READ frames of it are acted on; the rest waits in the
# decoder, with the socket unwatched (so TCP flow control holds the sender back),
# for the next iteration. At about a microsecond a frame, a peer that floods tiny
# frames delays everyone else by at most a few hundred microseconds per iteration.
READ_CHUNK = 64 * 1024
MAX_FRAMES_PER_READ = 256

_read_buffer = bytearray(READ_CHUNK)
_read_view = memoryview(_read_buffer)


class ChannelOwner(Protocol):
    """What a channel needs from the endpoint it belongs to (a server, a client)."""

    loop: EventLoop
    counters: IoCounters
    max_pending: int


OwnerT = TypeVar("OwnerT", bound=ChannelOwner)


class Channel(Generic[OwnerT]):
    """Buffered frame I/O for one socket, driving one Session.

    Subclasses implement ``handle(events)`` and may override ``on_released()``.
    """

    __slots__ = ("owner", "sock", "fd", "decoder", "session", "out", "timer")

    def __init__(
        self, owner: OwnerT, sock: socket.socket, session: Session, max_payload: int
    ) -> None:
        self.owner = owner
        self.sock = sock
        self.fd = sock.fileno()  # -1 once released
        self.decoder = FrameDecoder(max_payload)
        self.session = session
        self.out: bytearray | None = None  # unsent output, or a cork while dispatching
        self.timer: Timer | None = None

    # --- subclass hooks ---------------------------------------------------------------

    def handle(self, events: Events) -> None:
        """Act on the session's events (Opened, Message, Closed, ...)."""
        raise NotImplementedError

    def on_released(self) -> None:
        """The socket is closed and every loop registration gone."""

    @property
    def released(self) -> bool:
        return self.fd < 0

    # --- the session's steps -----------------------------------------------------------

    def apply(self, step: Step) -> None:
        """Send what the session produced, hand its events over, and follow its state:
        re-arm the timer if its deadline moved earlier, half-close after the last
        frame, release the socket once CLOSED."""
        out, events = step
        if events:
            # Cork: the session's output and the application's sends from its
            # callbacks go out together, in order, in one send. A step that moves
            # the session to CLOSING always has events, so its last frame leaves
            # through _flush, which then half-closes.
            if self.out is None:
                self.out = bytearray()
            if out:
                self._write(out)
            self.handle(events)
            if self.fd >= 0:
                self._flush()
        elif out:
            self._write(out)
        if self.fd >= 0:
            if self.session.state is S_CLOSED:
                self._release()
            elif events or self.timer is None:
                # Only a state change (it comes with events) can move the deadline
                # earlier; a heartbeat only moves it later, which the timer finds out
                # when it fires.
                self.arm()

    def arm(self) -> None:
        """Make the timer fire no later than the session's next deadline."""
        due = self.session.next_deadline()
        timer = self.timer
        if timer is not None:
            if timer <= due:
                return  # it fires first, finds nothing due, and re-arms then
            timer.cancel()
            self.timer = None
        if due != FOREVER:
            self.timer = self.owner.loop.call_at(due, self.on_deadline)

    def on_deadline(self) -> None:
        self.timer = None
        session = self.session
        now = self.owner.loop.now
        if session.expired(now):
            # T6: never declare a peer dead because *we* were late. Its frames may be
            # waiting in the socket (a long iteration, a stopped process): read them
            # first, on the same clock the deadline is judged by.
            self.on_readable()
            if self.fd < 0:
                return
        self.apply(session.deadline_reached(now))

    # --- reading -----------------------------------------------------------------------

    def start_reading(self) -> None:
        # The channel is its own read callback (see __call__): a bound method stored
        # in the loop's table would cost 64 bytes per connection.
        self.owner.loop.add_reader(self.fd, self)

    def connection_made(self) -> None:
        """Client side: the TCP connect completed; read, and say HELLO (H1)."""
        self.start_reading()
        self._write(self.session.connected(self.owner.loop.now))

    def on_readable(self) -> None:
        try:
            n = self.sock.recv_into(_read_buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self._read_failed(exc)
            return
        if not n:
            self._read_eof()
            return
        session = self.session
        if session.state is S_CLOSING:
            return  # draining input until the peer's EOF
        self.owner.counters.bytes_in += n
        try:
            frames = self.decoder.feed(_read_view[:n], MAX_FRAMES_PER_READ)
        except RemoteProtocolError as exc:
            self._refuse_input(exc)
            return
        if frames:
            self._process(frames)

    def _read_failed(self, exc: OSError) -> None:
        self.apply(self.session.abort(Reason.PEER_RESET, exc.strerror or str(exc)))

    def _read_eof(self) -> None:
        self.apply(self.session.eof_received(self.owner.loop.now, self.decoder.buffered))

    def _process(self, frames: list[Frame]) -> bool:
        """Hand the session complete frames; pause reading if it throttled the peer
        or if the decoder may hold more than this iteration's share. False if it
        paused."""
        owner = self.owner
        owner.counters.frames_in += len(frames)
        out, events = self.session.receive(frames, owner.loop.now)
        if events:
            self.apply((out, events))
            last = events[-1]
            if type(last) is Throttled and self.fd >= 0:
                self._pause()
                owner.loop.call_at(last.until, self._resume)
                return False
        elif out:
            # A heartbeat: no state changed, so no deadline moved earlier and nothing
            # is closing; only the answer needs sending.
            self._write(out)
        if len(frames) == MAX_FRAMES_PER_READ and self.fd >= 0:
            self._pause()
            owner.loop.call_soon(self._resume)
            return False
        return True

    def _pause(self) -> None:
        self.owner.loop.remove_reader(self.fd)

    def _resume(self) -> None:
        """After a pause: the frames held back first (a share per iteration), then the
        socket again. Throttled peers wait out their window first."""
        if self.fd < 0:
            return
        session = self.session
        loop = self.owner.loop
        if session.state is not S_OPEN:
            loop.add_reader(self.fd, self)  # closing: drain to the EOF
            return
        until = session.throttled_until()
        if until > loop.now:
            loop.call_at(until, self._resume)
            return
        if self._decode(b"") and self.fd >= 0:
            loop.add_reader(self.fd, self)

    def _decode(self, data: bytes) -> bool:
        """Feed ``data`` to the decoder and act on this iteration's share of frames;
        False if the channel paused or refused the input."""
        try:
            frames = self.decoder.feed(data, MAX_FRAMES_PER_READ)
        except RemoteProtocolError as exc:
            self._refuse_input(exc)
            return False
        return not frames or self._process(frames)

    def _refuse_input(self, error: RemoteProtocolError) -> None:
        """A bad header (F1): act on the good frames before it, then ERROR (C3)."""
        now = self.owner.loop.now
        if error.frames:
            self.owner.counters.frames_in += len(error.frames)
            self.apply(self.session.receive(error.frames, now))
        if self.fd >= 0:
            self.apply(self.session.protocol_error(error, now))

    __call__ = on_readable

    # --- writing -----------------------------------------------------------------------

    def _write(self, data: bytes) -> bool:
        """Send ``data`` or queue it; False if the channel is gone (or just died)."""
        if self.fd < 0:
            return False
        owner = self.owner
        owner.counters.bytes_out += len(data)
        out = self.out
        if out is not None:
            out += data
            if len(out) > owner.max_pending:
                self._abort(Reason.SLOW_CONSUMER, f"{len(out)} bytes pending")
                return False
            return True
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._abort(Reason.PEER_RESET, exc.strerror or str(exc))
            return False
        if sent == len(data):
            return True
        if len(data) - sent > owner.max_pending:
            self._abort(Reason.SLOW_CONSUMER, "frame exceeds pending cap")
            return False
        self.out = bytearray(data[sent:]) if sent else bytearray(data)
        owner.loop.add_writer(self.fd, self._flush)
        return True

    def _flush(self) -> None:
        """Send what is pending; the writability callback while anything is left."""
        out = self.out
        loop = self.owner.loop
        if out:
            try:
                sent = self.sock.send(out)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._abort(Reason.PEER_RESET, exc.strerror or str(exc))
                return
            del out[:sent]
            if out:
                loop.add_writer(self.fd, self._flush)  # a no-op if already watching
                return
        self.out = None
        loop.remove_writer(self.fd)
        if self.session.state is S_CLOSING:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        # Half-close after the last frame: the peer reads it, then our FIN, instead of
        # an RST that unread input would provoke (C3).
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._release()

    def drop(self, reason: Reason, detail: str = "") -> None:
        """Give up on the connection at once: no last frame, no linger."""
        self._abort(reason, detail)

    def _abort(self, reason: Reason, detail: str) -> None:
        self.out = None
        self.apply(self.session.abort(reason, detail))
        self._release()

    # --- ending ------------------------------------------------------------------------

    def _release(self) -> None:
        """Close the socket and drop every loop registration. Idempotent."""
        fd = self.fd
        if fd < 0:
            return
        self.fd = -1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.owner.loop.forget_fd(fd)
        self.out = None
        self.sock.close()
        self.on_released()


class TlsChannel(Channel[OwnerT]):
    """A Channel whose bytes on the socket are TLS records (``hbloop.net.tls.TlsLayer``).

    Mixed in before the endpoint's channel class (``class TlsPeer(TlsChannel["Server"],
    Peer)``), which declares the ``tls`` slot: a mixin with a slot of its own would
    clash with the endpoint class's slots. A plain channel runs none of this code.

    * Reading: every ciphertext read is decrypted whole (``TlsLayer.receive`` leaves
      nothing inside OpenSSL, which level-triggered epoll could not see) and the
      plaintext goes to the decoder, which keeps what exceeds this iteration's frame
      share for the pause and resume of ``Channel._process``. Handshake records are
      sent as soon as they are produced.
    * Writing: each write is encrypted and the ciphertext goes through
      ``Channel._write``, so ``max_pending`` caps what the socket has yet to take.
      Before the TLS handshake (a handshake timeout's CLOSE) nothing can be said.
    * Ending: close_notify once, right behind the last frame, before the FIN. A TLS
      failure sends OpenSSL's alert and ends the connection with ``Reason.TLS_ERROR``.
    """

    __slots__ = ()

    tls: TlsLayer

    def connection_made(self) -> None:
        """Client side: TCP is up; the ClientHello now, HELLO once TLS is."""
        self.start_reading()
        self._write_raw(self.tls.start())

    def tls_established(self) -> None:
        """The TLS handshake completed: a client says HELLO now (H1)."""
        if self.session.state is State.CONNECTING:
            self._write(self.session.connected(self.owner.loop.now))

    def not_tls(self, error: NotTlsError) -> None:
        """The peer sent plain text where a TLS record was due."""
        self._tls_failed(error.reason)

    def _tls_failed(self, reason: str) -> None:
        alert = self.tls.data_to_send()  # tells the peer why, if OpenSSL has a word
        if alert:
            self._write_raw(alert)
        self._abort(Reason.TLS_ERROR, reason)

    def on_readable(self) -> None:
        try:
            n = self.sock.recv_into(_read_buffer)
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):
                self._read_failed(exc)
            return
        if n and self.session.state is not S_CLOSING:  # else drain to the peer's EOF
            self.owner.counters.bytes_in += n
            self._receive_records(_read_view[:n])
        elif not n:
            self._read_eof()

    __call__ = on_readable

    def _receive_records(self, ciphertext: memoryview) -> None:
        tls = self.tls
        established = tls.handshake_done
        try:
            plaintext = tls.receive(ciphertext)
        except NotTlsError as exc:
            self.not_tls(exc)
            return
        except TlsError as exc:
            self._tls_failed(exc.reason)
            return
        records = tls.data_to_send()
        if records and not self._write_raw(records):
            return
        if not established and tls.handshake_done:
            self.tls_established()
        if plaintext and self.fd >= 0 and not self._decode(plaintext):
            return  # paused (the rest waits in the decoder) or refused
        if tls.peer_closed and self.fd >= 0:
            self._read_eof()  # close_notify: the peer will send nothing more

    def _write(self, data: bytes) -> bool:
        tls = self.tls
        if not tls.can_send:
            return self.fd >= 0  # before the TLS handshake or after close_notify
        return super()._write(tls.send(data))

    def _write_raw(self, data: bytes) -> bool:
        """Bytes for the socket as they are: TLS records, or plain text for a peer
        that speaks no TLS."""
        return super()._write(data)

    def _flush(self) -> None:
        tls = self.tls
        if self.session.state is S_CLOSING and not tls.closed:
            # The last frame is queued (or sent): close_notify goes right behind it.
            notify = tls.close()
            if notify and not self._write_raw(notify):
                return
        super()._flush()
