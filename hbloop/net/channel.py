"""The I/O shell around a Session: one non-blocking socket on an EventLoop.

A ``Channel`` moves bytes and time between the socket, the loop and its
``hbloop.core.session.Session``, and hands the session's events to its endpoint (a
server, a client, the bench's load generator), which decides what they mean. The
session decodes, acts and refuses; the channel only carries bytes.

* **Reading.** One ``recv_into`` per readiness, of at most ``READ_CHUNK`` bytes, into
  a buffer shared by every channel of the process (single-threaded, so that is safe),
  which keeps an idle connection's memory to its objects and its socket. The bytes go
  to ``session.receive_data`` with the loop's clock. A session that wants no more
  input for now (``session.paused``: it holds more frames than one read acts on, or
  the peer spent its rate, T9) is not read again until ``session.resume_at()``, when
  it gets its next share first; TCP flow control holds the sender back meanwhile, so
  one peer's burst cannot stall the others.
* **Writing** follows asyncio's selector transport: send at once when nothing is
  pending, keep the unsent rest in a bytearray, watch for writability only while that
  buffer is non-empty. While the events of one step are dispatched, output is corked:
  the session's answers and whatever the endpoint sends in its callbacks leave in one
  ``send``. Unsent output past the endpoint's ``max_pending`` drops the connection as
  a slow consumer.
* **Time.** While the session's only deadline is the peer's silence
  (``session.silence_timeout()``: a server judging a client that pings), the channel
  is a member of the loop's ``DeadlineGroup`` for that timeout, ordered by the time
  of the peer's last frame: a read that completes a frame moves it to the end (one
  ``move_to_end``), and the group's one timer expires it. Otherwise one loop timer per
  connection, armed at ``session.next_deadline()`` and re-armed only when it fires or
  the deadline moves earlier (a state change). Either way a heartbeat costs no heap
  operation.
* **Ending.** When the session is CLOSING its last frame is flushed, then the
  writing half is shut down (TCP FIN), and input is drained until the peer's EOF or
  the linger deadline; CLOSED releases the socket.
* **TLS and tracing** are parts a ``LayeredChannel`` holds, either or both: with a
  ``hbloop.net.tls.TlsLayer`` every read is decrypted before the session sees it and
  every write encrypted (the slow-consumer cap counts ciphertext), and the last frame
  is followed by close_notify; with a ``hbloop.net.trace.Tracer`` every frame in and
  out is logged. ``make_channel`` picks the plain ``Channel`` when there is neither,
  so that its per-frame path holds no test for them at all (the tests cost about 1 %
  of a heartbeat's instructions).
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Generic, Protocol, TypeVar

from hbloop.core.protocol import RemoteProtocolError
from hbloop.core.session import (
    FOREVER,
    HEARTBEAT_SIZE,
    S_CLOSED,
    S_CLOSING,
    Events,
    Reason,
    Role,
    Session,
    State,
    Step,
)
from hbloop.core.wire import Code
from hbloop.net.counters import IoCounters
from hbloop.net.loop import DeadlineGroup, EventLoop, Timer
from hbloop.net.tls import MAX_RECORD_CIPHERTEXT, Certificate, NotTlsError, TlsError, TlsLayer
from hbloop.net.trace import Tracer

# Fairness: one recv() takes at most this many bytes (a maximum-size DATA frame at the
# default --max-frame), and the session acts on at most MAX_FRAMES_PER_READ frames
# of them (hbloop.core.session); the rest waits in the session's buffer, with the
# socket unwatched, for the next iteration.
READ_CHUNK = 64 * 1024

_read_buffer = bytearray(READ_CHUNK)
_read_view = memoryview(_read_buffer)

# Where a TLS channel decrypts a read to (``TlsLayer.receive_into``), shared the same
# way: the plaintext goes from here to the session, with no bytes object in between.
_plain_buffer = bytearray(READ_CHUNK + MAX_RECORD_CIPHERTEXT)
_plain_view = memoryview(_plain_buffer)

AppT = TypeVar("AppT")


class Endpoint(Protocol[AppT]):
    """What a channel needs from the endpoint it belongs to (a server, a client): the
    loop, where to count traffic, the cap on unsent output, and the three things a
    channel reports."""

    loop: EventLoop
    counters: IoCounters
    max_pending: int

    def channel_events(self, channel: Channel[AppT], events: Events) -> None:
        """The session's events (Opened, Message, Closed, ...), in order."""

    def channel_released(self, channel: Channel[AppT]) -> None:
        """The socket is closed and every loop registration gone."""

    def tls_handshake(self, done: bool) -> None:
        """A TLS handshake completed (True), or failed before completing (False)."""


class Channel(Generic[AppT]):
    """Buffered I/O for one socket, driving one Session for an endpoint.

    ``app`` is the endpoint's own object for the connection (a server's Peer), which
    the channel only carries. The endpoint sends with ``send`` (DATA), ``apply`` (what
    a session method returned) and ``close``, and ends a connection at once with
    ``drop``.
    """

    __slots__ = ("endpoint", "app", "sock", "fd", "session", "out", "timer", "group")

    def __init__(
        self, endpoint: Endpoint[AppT], app: AppT, sock: socket.socket, session: Session
    ) -> None:
        self.endpoint = endpoint
        self.app = app
        self.sock = sock
        self.fd = sock.fileno()  # -1 once released
        self.session = session
        self.out: bytearray | None = None  # unsent output, or a cork while dispatching
        self.timer: Timer | None = None
        self.group: DeadlineGroup | None = None  # instead of the timer (see "Time")

    @property
    def released(self) -> bool:
        return self.fd < 0

    def peer_certificate(self) -> Certificate | None:
        """The peer's verified certificate under TLS, else None."""
        return None

    # --- the endpoint's requests --------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Send ``data`` as DATA; False if the connection is not OPEN or is gone."""
        session = self.session
        if session.state is not State.OPEN:
            return False
        return self._write(session.send_data(data, self.endpoint.loop.now))

    def close(
        self, code: Code, reason: Reason = Reason.CLOSED_LOCALLY, linger: float | None = None
    ) -> None:
        """Send CLOSE ``code`` after the output already queued, and end the connection
        once the peer has read it (or ``linger`` has passed)."""
        self.apply(self.session.close(code, self.endpoint.loop.now, reason, linger))

    def drop(self, reason: Reason, detail: str = "") -> None:
        """Give up on the connection at once: no last frame, no linger."""
        self._abort(reason, detail)

    def apply(self, step: Step) -> None:
        """Send what the session produced, hand its events over, and follow its state:
        re-arm the timer if its deadline moved earlier, half-close after the last
        frame, release the socket once CLOSED."""
        out, events = step
        if events:
            # Cork: the session's output and the endpoint's sends from its callbacks go
            # out together, in order, in one send. A step that moves the session to
            # CLOSING always has events, so its last frame leaves through _flush, which
            # then half-closes.
            if self.out is None:
                self.out = bytearray()
            if out:
                self._write(out)
            self.endpoint.channel_events(self, events)
            if self.fd >= 0:
                self._flush()
        elif out:
            self._write(out)
        if self.fd >= 0:
            if self.session.state is S_CLOSED:
                self._release()
            elif events or (self.timer is None and self.group is None):
                # Only a state change (it comes with events) can move the deadline
                # earlier; a heartbeat only moves it later, which the timer finds out
                # when it fires.
                self.arm()

    # --- time --------------------------------------------------------------------------

    def arm(self) -> None:
        """Make the timer (or the deadline group) fire no later than the session's next
        deadline."""
        session = self.session
        period = session.silence_timeout()
        group = self.group
        if period is not None:
            if group is not None:
                return  # the reads keep its place
            group = self.endpoint.loop.deadline_group(period, _last_recv, Channel._on_deadline)
            if group.admits(session.last_recv):
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
                group.join(self)
                self.group = group
                return
            # Silent since before the group's newest member (an admission that took a
            # while): its own timer, until that fires and it joins.
        elif group is not None:
            group.leave(self)
            self.group = None
        due = session.next_deadline()
        timer = self.timer
        if timer is not None:
            if timer <= due:
                return  # it fires first, finds nothing due, and re-arms then
            timer.cancel()
            self.timer = None
        if due != FOREVER:
            # The channel as an argument rather than a bound method: 16 bytes less
            # per armed connection.
            self.timer = self.endpoint.loop.call_at(due, Channel._on_deadline, self)

    def _on_deadline(self) -> None:
        self.timer = None
        self.group = None  # a group takes a member out before it expires it
        session = self.session
        now = self.endpoint.loop.now
        if session.expired(now):
            # T6: never declare a peer dead because *we* were late. Its frames may be
            # waiting in the socket (a long iteration, a stopped process): read them
            # first, on the same clock the deadline is judged by.
            self.on_readable()
            if self.fd < 0:
                return
        self.apply(session.deadline_reached(now))

    # --- connecting (client side) --------------------------------------------------------

    def connect(self, address: tuple[Any, ...]) -> None:
        """Start a non-blocking connect to ``address``; once it completes, read and say
        HELLO (through TLS first, with a layer). The handshake deadline (H9) is armed
        now: it covers the connect too."""
        err = self.sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(err)
            return
        self.endpoint.loop.add_writer(self.fd, self._on_connected)
        self.arm()

    def _on_connected(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(err)
            return
        self.endpoint.loop.remove_writer(self.fd)
        self.start_reading()
        self._say_hello()

    def _say_hello(self) -> None:
        """The connection is up: HELLO (H1)."""
        self._write(self.session.connected(self.endpoint.loop.now))

    def _connect_failed(self, err: int) -> None:
        self.drop(Reason.PEER_RESET, f"connect: {errno.errorcode.get(err, err)}")

    # --- reading -----------------------------------------------------------------------

    def start_reading(self) -> None:
        # The channel is its own read callback (see __call__): a bound method stored
        # in the loop's table would cost 64 bytes per connection.
        self.endpoint.loop.add_reader(self.fd, self)

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
        endpoint = self.endpoint
        session = self.session
        now = endpoint.loop.now
        if n == HEARTBEAT_SIZE:
            # Most reads are one heartbeat: matched by its bytes, stamped, answered,
            # its bytes counted by the session's quick count (IoCounters.settle).
            answer = session.receive_heartbeat(_read_buffer, now)
            if answer is not None:
                group = self.group
                if group is not None:
                    group.move_to_end(self)  # its silence deadline moved
                if answer:
                    self._send(answer)  # a quick PONG, counted by IoCounters.settle
                return
        endpoint.counters.bytes_in += n
        # More than one heartbeat: PINGs that waited in the socket share the time since
        # the previous read (T8), which a stall since the wake-up would hide.
        now = endpoint.loop.refresh_now()
        out, events = session.receive_data(_read_view[:n], now)
        if self.group is not None and session.last_recv == now:
            self.group.move_to_end(self)
        if events:
            self.apply((out, events))
        elif out:
            # A heartbeat: no state changed, so no deadline moved earlier and nothing
            # is closing; only the answer needs sending.
            self._write(out)
        if session.paused and self.fd >= 0:
            self._pause()

    __call__ = on_readable

    def _read_failed(self, exc: OSError) -> None:
        self.apply(self.session.abort(Reason.PEER_RESET, exc.strerror or str(exc)))

    def _read_eof(self) -> None:
        self.apply(self.session.eof_received(self.endpoint.loop.now))

    def _pause(self) -> None:
        """Stop reading until the session wants input again."""
        loop = self.endpoint.loop
        loop.remove_reader(self.fd)
        until = self.session.resume_at()
        if until > loop.now:
            loop.call_at(until, self._resume)
        else:
            loop.call_soon(self._resume)

    def _resume(self) -> None:
        """After a pause: the session's next share of what it holds, then the socket
        again (unless it paused once more)."""
        if self.fd < 0:
            return
        self._serve(b"")
        if self.fd >= 0 and not self.session.paused:
            self.endpoint.loop.add_reader(self.fd, self)

    def _serve(self, data: bytes | memoryview) -> None:
        """Hand the session ``data`` and follow its step; pause if it asks to."""
        session = self.session
        now = self.endpoint.loop.refresh_now()  # as on_readable's general path
        step = session.receive_data(data, now)
        if self.group is not None and session.last_recv == now:
            self.group.move_to_end(self)  # its silence deadline moved
        self.apply(step)
        if session.paused and self.fd >= 0:
            self._pause()

    # --- writing -----------------------------------------------------------------------

    def _write(self, data: bytes) -> bool:
        """Send ``data`` (frames) at once or queue it; False if the channel is gone (or
        just died)."""
        if self.fd < 0:
            return False
        self.endpoint.counters.bytes_out += len(data)
        return self._send(data)

    def _send(self, data: bytes) -> bool:
        """``_write`` without counting ``data`` in ``bytes_out``: the fast path's PONG,
        which the session's quick count publishes."""
        endpoint = self.endpoint
        out = self.out
        if out is not None:
            out += data
            if len(out) > endpoint.max_pending:
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
        if len(data) - sent > endpoint.max_pending:
            self._abort(Reason.SLOW_CONSUMER, "frame exceeds pending cap")
            return False
        self.out = bytearray(data[sent:]) if sent else bytearray(data)
        endpoint.loop.add_writer(self.fd, self._flush)
        return True

    def _flush(self) -> None:
        """Send what is pending; the writability callback while anything is left."""
        out = self.out
        loop = self.endpoint.loop
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

    # --- ending ------------------------------------------------------------------------

    def _abort(self, reason: Reason, detail: str) -> None:
        self.out = None
        self.apply(self.session.abort(reason, detail))
        self._release()

    def _release(self) -> None:
        """Close the socket and drop every loop registration. Idempotent."""
        fd = self.fd
        if fd < 0:
            return
        self.fd = -1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.group is not None:
            self.group.leave(self)
            self.group = None
        self.endpoint.loop.forget_fd(fd)
        self.out = None
        self.sock.close()
        self.endpoint.channel_released(self)


class LayeredChannel(Channel[AppT]):
    """A Channel with a TLS layer, a tracer, or both (see ``make_channel``).

    * Reading: every ciphertext read is decrypted whole (``TlsLayer.receive`` leaves
      nothing inside OpenSSL, which level-triggered epoll could not see), handshake
      records are sent as soon as they are produced, and the plaintext is traced and
      goes to the session.
    * Writing: each write of frames is traced, then encrypted, and the ciphertext goes
      through ``Channel._write``, so ``max_pending`` caps what the socket has yet to
      take. Before the TLS handshake (a handshake timeout's CLOSE) nothing can be said.
    * Ending: close_notify once, right behind the last frame, before the FIN. A TLS
      failure sends OpenSSL's alert and ends the connection with ``Reason.TLS_ERROR``;
      a server answers plain text with a plain ERROR.
    """

    __slots__ = ("tls", "tracer")

    def __init__(
        self,
        endpoint: Endpoint[AppT],
        app: AppT,
        sock: socket.socket,
        session: Session,
        tls: TlsLayer | None,
        tracer: Tracer | None,
    ) -> None:
        super().__init__(endpoint, app, sock, session)
        self.tls = tls
        self.tracer = tracer

    def peer_certificate(self) -> Certificate | None:
        return None if self.tls is None else self.tls.peer_certificate()

    def _say_hello(self) -> None:
        if self.tls is None:
            super()._say_hello()
        else:
            self._write_raw(self.tls.start())  # the ClientHello; HELLO once TLS is up

    def on_readable(self) -> None:
        try:
            n = self.sock.recv_into(_read_buffer)  # one read, into the shared buffer
        except BlockingIOError:
            return
        except OSError as exc:
            self._read_failed(exc)
            return
        if not n:
            self._read_eof()
            return
        self.endpoint.counters.bytes_in += n
        tls = self.tls
        data = _read_view[:n]
        if tls is not None:
            size = self._decrypt(tls, data)  # into _plain_buffer
            if size == HEARTBEAT_SIZE and self.tracer is None and self._heartbeat(tls):
                return
            data = _plain_view[:size]
        if data:
            if self.tracer is not None:
                self.tracer.received(data)
            self._serve(data)
        if tls is not None and tls.peer_closed and self.fd >= 0:
            self._read_eof()  # close_notify: the peer will send nothing more

    __call__ = on_readable

    # --- TLS -----------------------------------------------------------------------------

    def _decrypt(self, tls: TlsLayer, ciphertext: memoryview) -> int:
        """Decrypt the plaintext ``ciphertext`` completes into ``_plain_buffer``; return
        its length, 0 when there is none, or when TLS failed and the connection is
        ending."""
        if self.session.state is S_CLOSING:
            return 0  # draining to the peer's EOF; our close_notify is sent
        established = tls.handshake_done
        try:
            size = tls.receive_into(ciphertext, _plain_view)
        except TlsError as exc:
            if not established:
                self.endpoint.tls_handshake(False)
            self._tls_failed(tls, exc)
            return 0
        if tls.outgoing.pending and not self._write_raw(tls.data_to_send()):
            return 0  # handshake records, an alert: sent as soon as they are made
        if not established and tls.handshake_done:
            self.endpoint.tls_handshake(True)
            if self.session.state is State.CONNECTING:  # a client says HELLO now (H1)
                self._write(self.session.connected(self.endpoint.loop.now))
        return size

    def _heartbeat(self, tls: TlsLayer) -> bool:
        """The plain ``Channel``'s fast path, on a decrypted read of one heartbeat in
        ``_plain_buffer``: stamped and answered without the general path; False if the
        session wants the general path (``Session.receive_heartbeat``)."""
        if tls.peer_closed:
            return False  # close_notify came with it: the general path reads the EOF
        endpoint = self.endpoint
        answer = self.session.receive_heartbeat(_plain_buffer, endpoint.loop.now)
        if answer is None:
            return False
        # The session's quick count publishes HEARTBEAT_SIZE bytes in (and out, for a
        # PONG) on scrape (IoCounters.settle): on TLS the figures count ciphertext.
        counters = endpoint.counters
        counters.bytes_in -= HEARTBEAT_SIZE
        group = self.group
        if group is not None:
            group.move_to_end(self)  # its silence deadline moved
        if answer and tls.can_send:
            records = tls.send(answer)
            counters.bytes_out += len(records) - HEARTBEAT_SIZE
            self._send(records)
        return True

    def _tls_failed(self, tls: TlsLayer, error: TlsError) -> None:
        session = self.session
        if isinstance(error, NotTlsError) and session.config.role is Role.SERVER:
            # A plain client on a TLS port: say why in plain text, which it can read
            # (protocol.md, section 8), corked so that it leaves before the FIN.
            out, events = session.protocol_error(
                RemoteProtocolError(Code.UNAUTHORIZED, f"TLS required on this port ({error})"),
                self.endpoint.loop.now,
                Reason.TLS_ERROR,
            )
            self.out = bytearray()
            self._write_raw(out)
            self.apply((b"", events))
            return
        alert = tls.data_to_send()  # tells the peer why, if OpenSSL has a word
        if alert:
            self._write_raw(alert)
        self._abort(Reason.TLS_ERROR, error.reason)

    # --- writing ---------------------------------------------------------------------

    def _write(self, data: bytes) -> bool:
        if self.fd < 0:
            return False
        if self.tracer is not None:
            self.tracer.sent(data)
        tls = self.tls
        if tls is None:
            return super()._write(data)
        if not tls.can_send:
            return True  # before the TLS handshake (a timeout's CLOSE) or after close_notify
        return super()._write(tls.send(data))

    def _write_raw(self, data: bytes) -> bool:
        """Bytes for the socket as they are: TLS records, or plain text for a peer that
        speaks no TLS."""
        return super()._write(data)

    def _flush(self) -> None:
        tls = self.tls
        if tls is not None and self.session.state is S_CLOSING and not tls.closed:
            # The last frame is queued (or sent): close_notify goes right behind it.
            notify = tls.close()
            if notify and not self._write_raw(notify):
                return
        super()._flush()


def _last_recv(channel: Channel[Any]) -> float:
    """A channel's touch time in its deadline group: when its peer's last frame came."""
    return channel.session.last_recv


def make_channel(
    endpoint: Endpoint[AppT],
    app: AppT,
    sock: socket.socket,
    session: Session,
    tls: TlsLayer | None = None,
    tracer: Tracer | None = None,
) -> Channel[AppT]:
    """A channel for ``sock``: a ``LayeredChannel`` with TLS, a tracer or both, else
    the plain ``Channel``, whose per-frame path has no test for either."""
    if tls is None and tracer is None:
        return Channel(endpoint, app, sock, session)
    return LayeredChannel(endpoint, app, sock, session, tls, tracer)
