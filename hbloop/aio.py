"""``hbloop.aio``: the heartbeat client for applications on asyncio (or uvloop).

The protocol is ``hbloop.Client``'s, from the same parts: the sans-IO
``hbloop.core.session.Session`` (its receive buffer and decoding, the handshake, T3's
PING timing, the T6 timeout, strikes, CLOSE and ERROR), with ``hbloop.client``'s
session configuration, back-off and rules for when to stop. Only the I/O shell is asyncio's:
an ``asyncio.Protocol`` per connection attempt, and one ``loop.call_at`` timer per
connection, re-armed at ``session.next_deadline()`` when it fires or when that
deadline moves earlier (a state change), so a heartbeat costs no timer operation::

    async with hbloop.aio.connect("127.0.0.1", 7878, "sensor-7", interval=5) as client:
        welcome = await client.welcome()    # the grant of the current connection
        await client.send(b"online")        # False if not connected just now
        async for message in client:        # DATA from the server, across reconnects
            ...
    # leaving the block, or the task being cancelled, sends CLOSE NORMAL

Flow control, both ways, as asyncio's streams do it:

* **Out.** While the transport's buffer is above its high-water mark, ``send`` waits
  for it to drain. What the session itself sends (PONGs, CLOSE) is never held back;
  output past ``DEFAULT_MAX_PENDING`` drops the connection as a slow consumer, as
  ``hbloop.Client`` does. (Reading goes on meanwhile: a client that stopped reading
  because its own output is stuck would stall a server that echoes.)
* **In.** DATA waits in a queue for the iterator. Once ``MAX_QUEUED_MESSAGES`` are
  waiting the client stops reading, so that TCP holds the server back, until the
  application has taken half of them. When the heartbeat timeout comes due while
  reading is paused, or while the loop was blocked, the client first reads what is
  waiting (T6: a peer is never declared dead because this side was late).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import ssl
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import cast

from hbloop.client import AsyncTokenProvider, ClientBase, DisconnectCallback
from hbloop.core.backoff import Backoff
from hbloop.core.credentials import REAUTH_RETRY
from hbloop.core.policy import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_PENDING, DEFAULT_MIN_INTERVAL
from hbloop.core.session import (
    FOREVER,
    NO_EVENTS,
    S_CLOSED,
    S_CLOSING,
    S_OPEN,
    Closed,
    Disconnect,
    Events,
    Message,
    Opened,
    Reason,
    Reauthenticated,
    Session,
    State,
    Step,
)
from hbloop.core.wire import DEFAULT_MAX_PAYLOAD, Code, Welcome
from hbloop.net.sockets import apply_tcp_options
from hbloop.net.tls import describe_ssl_error
from hbloop.net.trace import Tracer

# DATA frames held for the iterator before the client stops reading from the server:
# a burst a consumer catches up with at once, at most 64 MiB of maximum-size frames.
MAX_QUEUED_MESSAGES = 1024
# Reading resumes once the queue is down to this, so that a consumer that keeps up
# just barely does not pause and resume the transport for every message.
RESUME_QUEUED_MESSAGES = MAX_QUEUED_MESSAGES // 2

# T6: a timeout found due is judged this much later, after the loop has polled once
# more. A timer due at once would not do: uvloop runs it as call_soon, before its
# poll. A millisecond is libuv's timer resolution.
JUDGE_AFTER = 0.001


def _failure(exc: OSError | None, during: str) -> tuple[Reason, str]:
    """Why a connection attempt or a connection failed, as hbloop.Client says it: a
    TLS check that failed is ``TLS_ERROR`` (final before WELCOME, R3); an EOF inside
    TLS, a reset or any other socket error is the network's ``PEER_RESET``."""
    if exc is None:
        return Reason.PEER_RESET, "connection lost"
    if isinstance(exc, ssl.SSLError) and not isinstance(
        exc, ssl.SSLEOFError | ssl.SSLZeroReturnError
    ):
        return Reason.TLS_ERROR, describe_ssl_error(exc)
    reason = errno.errorcode.get(exc.errno or 0, exc.strerror or str(exc))
    return Reason.PEER_RESET, f"{during}: {reason}"


class ClientStopped(Exception):
    """The client has stopped for good (closed, refused, or told not to reconnect);
    ``disconnect`` says why."""

    def __init__(self, disconnect: Disconnect) -> None:
        super().__init__(str(disconnect))
        self.disconnect = disconnect


class _Connection(asyncio.Protocol):
    """One connection attempt: the asyncio shell around a client Session."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.session = Session.client(client.session_config, loop.time())
        self.tracer = Tracer(f"{client.host}:{client.port}") if client.trace else None
        self.transport: asyncio.Transport | None = None
        # The one timer and when it is due (uvloop makes a timer due at once a plain
        # Handle, which does not say when).
        self.timer: asyncio.Handle | None = None
        self.timer_due = FOREVER
        self.reading = True
        self.writing_paused = False  # the transport's buffer is above its high-water mark
        self.judging = False  # T6: the timeout came due and waits for one read first
        self._drained: asyncio.Future[None] | None = None
        #: Why the connection ended (the session's Closed event), once it has.
        self.disconnect: Disconnect | None = None
        #: Resolved with ``disconnect`` once the transport is gone.
        self.ended: asyncio.Future[Disconnect] = loop.create_future()

    # --- asyncio's callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.session.state is not State.CONNECTING:
            self.transport.abort()  # given up on (the handshake deadline) while connecting
            return
        apply_tcp_options(transport.get_extra_info("socket"), DEFAULT_MAX_PENDING)
        self.write(self.session.connected(self.loop.time()))
        self.arm()

    def data_received(self, data: bytes) -> None:
        self.client.counters.bytes_in += len(data)
        if self.tracer is not None:
            self.tracer.received(data)
        session = self.session
        now = self.loop.time()
        self.apply(session.receive_data(data, now))
        # The session acts on a share of frames at a time; asyncio already bounds a
        # read (256 KiB), so the rest is served now rather than on another turn.
        while session.paused:
            self.apply(session.receive_data(b"", now))

    def eof_received(self) -> bool:
        self.apply(self.session.eof_received(self.loop.time()))
        return True  # keep the transport: apply() closes it once the session is CLOSED

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None or isinstance(exc, OSError):
            reason, detail = _failure(exc, "connection lost")
        else:
            reason, detail = Reason.PEER_RESET, str(exc)
        self.apply(self.session.abort(reason, detail))  # CLOSED: no timer left
        self._wake_drainers()
        self._end()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_drainers()

    # --- the session's steps ------------------------------------------------------------

    def apply(self, step: Step) -> None:
        """Send what the session produced, hand its events to the client, and follow
        its state: half-close after the last frame, let go once CLOSED, re-arm the timer
        if the deadline may have moved earlier."""
        out, events = step
        if out:
            self.write(out)
        if events:
            self.client.handle(self, events)
        state = self.session.state
        if state is S_CLOSED:
            self._release()
        elif state is S_CLOSING:
            if events:  # it has just sent its last frame: the server reads it, then EOF
                self._half_close()
            self.arm()
        elif events or self.timer is None:
            self.arm()

    def arm(self) -> None:
        """Make the timer fire no later than the session's next deadline."""
        due = self.session.next_deadline()
        timer = self.timer
        if timer is not None:
            if self.timer_due <= due:
                return  # it fires first, finds nothing due, and re-arms then
            timer.cancel()
            self.timer = None
        if due != FOREVER:
            self.timer = self.loop.call_at(due, self._on_deadline)
            self.timer_due = due

    def _on_deadline(self) -> None:
        self.timer = None
        now = self.loop.time()
        if self.session.expired(now) and not self.judging:
            # T6: the server's frames may be waiting unread, because this loop was
            # blocked or reading is paused: read once more, then judge.
            self.judging = True
            self._set_reading(True)
            self.timer = self.loop.call_later(JUDGE_AFTER, self._on_deadline)
            self.timer_due = now + JUDGE_AFTER
            return
        self.judging = False
        self.update_reading()
        self.apply(self.session.deadline_reached(now))

    # --- flow control -------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Hand ``data`` to the transport; False if the connection is gone, or just
        dropped because the server does not read (DEFAULT_MAX_PENDING)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if self.tracer is not None:
            self.tracer.sent(data)
        transport.write(data)
        self.client.counters.bytes_out += len(data)
        pending = transport.get_write_buffer_size()
        if pending > DEFAULT_MAX_PENDING:
            transport.abort()
            self.apply(self.session.abort(Reason.SLOW_CONSUMER, f"{pending} bytes pending"))
            return False
        return True

    async def drained(self) -> None:
        """Return once the transport's buffer is below its high-water mark, or the
        connection is gone."""
        while self.writing_paused and not self.ended.done():
            if self._drained is None:
                self._drained = self.loop.create_future()
            await asyncio.shield(self._drained)  # one waiter's cancellation is its own

    def _wake_drainers(self) -> None:
        if self._drained is not None:
            self._drained.set_result(None)
            self._drained = None

    def update_reading(self) -> None:
        """Read unless the message queue is full (with hysteresis)."""
        queued = len(self.client.messages)
        if queued >= MAX_QUEUED_MESSAGES:
            self._set_reading(False)
        elif queued <= RESUME_QUEUED_MESSAGES:
            self._set_reading(True)

    def _set_reading(self, reading: bool) -> None:
        transport = self.transport
        if reading == self.reading or transport is None or transport.is_closing():
            return
        self.reading = reading
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()

    # --- ending ---------------------------------------------------------------------------

    def _half_close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def _release(self) -> None:
        """The session is CLOSED: let the transport go. Idempotent. Output still
        buffered is dropped, as hbloop.Client drops it: the session has sent its last
        frame and waited (up to the linger) for the server to read it."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        if transport is None:
            self._end()  # never connected: nothing to wait for
        elif not transport.is_closing():
            transport.abort()  # connection_lost() follows, and ends it

    def _end(self) -> None:
        if not self.ended.done():
            assert self.disconnect is not None, "a session reports Closed before CLOSED"
            self.ended.set_result(self.disconnect)


class Client(ClientBase):
    """A reconnecting heartbeat client on the running asyncio loop.

    ``hbloop.Client``'s rules and options (``hbloop.client.ClientBase``): it reconnects
    after any end but a final one (protocol.md R3) with full-jitter back-off, unless
    ``reconnect`` is False; ``tls`` (an ``ssl.SSLContext``, such as
    ``hbloop.net.tls.client_context(ca, cert, key)``) and ``server_hostname``, ``token``
    (a string, or a provider asked before each attempt, sync or async), ``trace``,
    ``min_interval``, ``peer_max_payload`` and ``allow_plaintext_token`` as there.
    Start it with ``async with`` (or ``start()`` and, at the end, ``close()``).

    * ``await welcome()``: the current connection's grant; waits for the next handshake
      if not connected, and raises ClientStopped once the client has stopped.
    * ``await send(data)``: DATA to the server; False if not connected (nothing is queued
      across reconnects). Waits while the connection's output buffer is full. Raises
      PayloadTooLarge for DATA over ``peer_max_payload``.
    * ``async for message in client``: each DATA payload, across reconnects; the
      iteration ends once the client has stopped and the queue is empty.
    * ``await close(code)``: CLOSE, then the connection ends within the linger; returns
      why the client stopped. Cancelling the client's task does the same with NORMAL.

    Callbacks, optional, run on the loop; an exception in one is logged:
    ``on_welcome(welcome)`` after each handshake, ``on_disconnect(disconnect, retry_in)``
    when a connection ends (``retry_in``: the back-off delay, or None once stopped).
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        *,
        interval: float = 0.0,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        source_address: tuple[str, int] | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        on_welcome: Callable[[Welcome], None] | None = None,
        on_disconnect: DisconnectCallback | None = None,
        trace: bool = False,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        token: str | AsyncTokenProvider | None = None,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        peer_max_payload: int = DEFAULT_MAX_PAYLOAD,
        allow_plaintext_token: bool = False,
    ) -> None:
        super().__init__(
            host,
            port,
            name,
            interval=interval,
            reconnect=reconnect,
            backoff=backoff,
            source_address=source_address,
            handshake_timeout=handshake_timeout,
            on_welcome=on_welcome,
            on_disconnect=on_disconnect,
            token=token,
            tls=tls,
            server_hostname=server_hostname,
            trace=trace,
            min_interval=min_interval,
            peer_max_payload=peer_max_payload,
            allow_plaintext_token=allow_plaintext_token,
        )
        self.connection: _Connection | None = None
        #: DATA received and not yet taken by the iterator.
        self.messages: deque[bytes] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Future[None] | None = None  # the next change of state
        self._close_code = Code.NORMAL
        self._reauth: asyncio.Task[None] | None = None  # the next renewal (A6)

    # --- the application's API ------------------------------------------------------------

    async def __aenter__(self) -> Client:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start connecting, in a task of the running loop."""
        if self._task is not None:
            raise RuntimeError("the client was started already")
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"hbloop.aio client {self.name}")

    @property
    def connected(self) -> bool:
        """Past the handshake and not ending."""
        conn = self.connection
        return conn is not None and conn.session.state is S_OPEN

    async def welcome(self) -> Welcome:
        """The grant of the current connection, once there is one."""
        while True:
            conn = self.connection
            if conn is not None and conn.session.state is S_OPEN:
                return conn.session.grant.welcome
            if self.stopped is not None:
                raise ClientStopped(self.stopped)
            await self._next_change()

    async def send(self, data: bytes) -> bool:
        """Send DATA; False when not connected. Returns once the transport's buffer is
        below its high-water mark (at once, unless the server reads slowly)."""
        self.check_payload(data)
        conn = self.connection
        if conn is None or conn.session.state is not S_OPEN:
            return False
        if not conn.write(conn.session.send_data(data, conn.loop.time())):
            return False
        await conn.drained()
        return True

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> bytes:
        while not self.messages:
            if self.stopped is not None:
                raise StopAsyncIteration
            await self._next_change()
        data = self.messages.popleft()
        if self.connection is not None:
            self.connection.update_reading()
        return data

    async def close(self, code: Code = Code.NORMAL) -> Disconnect:
        """Send CLOSE ``code``, stop reconnecting, and wait until the connection has
        ended (at most the linger after the CLOSE); return why the client stopped."""
        task = self._task
        if task is None:
            self._stop(Disconnect(Reason.CLOSED_LOCALLY, code))
        else:
            if not task.done():
                if not task.cancelling():  # a second close() waits for the first
                    self._close_code = code
                    task.cancel()
                await asyncio.wait({task})  # waiting must not cancel it a second time
            if not task.cancelled():
                task.result()  # a bug of the client's own surfaces here
        assert self.stopped is not None
        return self.stopped

    # --- the connection attempts ----------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                disconnect = await self._attempt()
                assert self._loop is not None
                delay = self._retry_delay(disconnect, self._loop.time())
                if delay is None:
                    return  # stopped for good
                self._disconnected(disconnect, delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            await self._goodbye()
            raise

    async def _attempt(self) -> Disconnect:
        """One connection, from the TCP connect to the end of the session."""
        assert self._loop is not None
        if self.token_provider is not None:
            try:
                self.use_token(await self._ask_provider())
            except Exception as exc:  # the application's provider: retried, as a reset is
                return self.token_failed(exc)
        conn = _Connection(self, self._loop)
        self.connection = conn
        session = conn.session
        try:
            # H3: the handshake deadline covers the connect too.
            async with asyncio.timeout_at(session.next_deadline()):
                await self._loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    local_addr=self.source_address,
                    ssl=self.tls,
                    server_hostname=None if self.tls is None else self.server_hostname,
                )
        except TimeoutError:
            # The timeout fired at the session's deadline: the session's word on it.
            conn.apply(session.deadline_reached(session.next_deadline()))
        except OSError as exc:
            conn.apply(session.abort(*_failure(exc, "connect")))
        # Shielded: a cancellation is for this task, and the connection lives on
        # until _goodbye has closed it.
        return await asyncio.shield(conn.ended)

    async def _ask_provider(self) -> str | None:
        assert self.token_provider is not None
        token = self.token_provider()
        return await token if inspect.isawaitable(token) else token

    def _arm_reauth(self, conn: _Connection, delay: float | None) -> None:
        if self._reauth is not None:
            self._reauth.cancel()
        self._reauth = None if delay is None else conn.loop.create_task(self._renew(conn, delay))

    async def _renew(self, conn: _Connection, delay: float) -> None:
        """A6: offer the provider's token in AUTH; ask again every REAUTH_RETRY while
        it has no new one (or fails: the server's A5 close is what ends this)."""
        await asyncio.sleep(delay)
        while conn.session.state is S_OPEN:
            try:
                fresh = self.fresh_token(await self._ask_provider())
            except Exception as exc:  # the application's provider: asked again later
                self.token_failed(exc)
                fresh = None
            if fresh is not None and conn.session.state is S_OPEN:
                conn.apply((conn.session.send_auth(fresh, conn.loop.time()), NO_EVENTS))
                return  # the answer (Reauthenticated) arms the next renewal
            await asyncio.sleep(REAUTH_RETRY)

    async def _goodbye(self) -> None:
        """The client's task is cancelled (by ``close()``, or by whoever owns the loop):
        CLOSE, and wait for the connection to end."""
        try:
            conn = self.connection
            if conn is not None and not conn.ended.done():
                assert self._loop is not None
                conn.apply(conn.session.close(self._close_code, self._loop.time()))
                await asyncio.shield(conn.ended)
        finally:  # cancelled again while waiting: stopped all the same
            self._stop(Disconnect(Reason.CLOSED_LOCALLY, self._close_code))

    def handle(self, conn: _Connection, events: Events) -> None:
        """The session's events, from ``conn``'s ``apply``."""
        for event in events:
            if isinstance(event, Message):
                self.messages.append(event.data)
                conn.update_reading()
            elif isinstance(event, Opened):
                welcome = event.grant.welcome
                refusal = self.grant_refused(welcome)
                if refusal is None:
                    self.opened(welcome, conn.session.last_recv)
                    self._arm_reauth(conn, self.reauth_delay(welcome))
                else:
                    conn.apply(conn.session.protocol_error(refusal, conn.loop.time()))
            elif isinstance(event, Reauthenticated):
                self.reauthenticated()
                self._arm_reauth(conn, self.reauth_delay(conn.session.grant.welcome))
            elif isinstance(event, Closed):
                conn.disconnect = event.disconnect
                self._arm_reauth(conn, None)
        self._changed_now()

    def _stop(self, disconnect: Disconnect, final: bool = False) -> None:
        super()._stop(disconnect, final)
        self._changed_now()

    async def _next_change(self) -> None:
        if self._loop is None:
            raise RuntimeError("start the client first (async with, or start())")
        if self._changed is None:
            self._changed = self._loop.create_future()
        await asyncio.shield(self._changed)  # one waiter's cancellation is its own

    def _changed_now(self) -> None:
        if self._changed is not None:
            self._changed.set_result(None)
            self._changed = None


# ``async with hbloop.aio.connect(host, port, name, ...) as client:`` reads as what it
# does; the client is the context manager itself (as websockets' ``connect`` is).
connect = Client
