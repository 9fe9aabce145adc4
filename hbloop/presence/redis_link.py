"""A non-blocking Redis connection on hbloop's EventLoop, and a blocking one for tools.

``RedisLink`` is one more descriptor on the loop, so that nothing the server does ever
waits for Redis:

* **Pipelined.** ``call()`` encodes a command at once (hiredis' ``pack_command``, in C)
  and appends it to an output buffer; one ``loop.call_soon`` per iteration sends the
  whole buffer with one ``send``. Replies are matched to callbacks in order.
* **Bounded in flight, renewal first.** Ordinary commands wait in a queue and leave
  while fewer than MAX_IN_FLIGHT are unanswered; a ``first`` command (presence's
  lease renewal) goes straight to the output buffer, so that a mass connect or
  disconnect never holds it back more than MAX_IN_FLIGHT.
* **Parsed by hiredis.** ``hiredis.Reader`` is the RESP parser of Redis's official C
  client; the connection speaks RESP3 (``HELLO 3``), so pub/sub messages arrive as
  push replies on the same connection, between the ordinary replies, in the order
  Redis produced them.
* **Bounded.** At most ``max_pending`` commands may be queued or awaiting replies;
  past that ``call()`` refuses (returns False) and the caller must cope, as presence
  does by resynchronising later. Memory is bounded whatever Redis does.
* **Watched.** A command unanswered for ``reply_timeout`` (a stopped or wedged Redis,
  a dead path) fails the connection; so does EOF, a reset or a protocol error. Every
  callback still waiting is then called with ``RedisUnavailable``, and the link
  reconnects after a full-jitter back-off (as hbloop's clients do), forever, until
  ``close()``.
* **Scripts by hash.** Scripts are loaded (``SCRIPT LOAD``) as part of each
  connection's handshake, before any command of the caller, and then run with
  ``EVALSHA``. If Redis answers NOSCRIPT anyway (someone ran ``SCRIPT FLUSH``) the
  command is sent again as ``EVAL`` and ``on_script_flush`` tells the caller that
  order may have been broken.

``BlockingRedis`` is the same protocol on a blocking socket, for the short-lived
``hbloop who`` and ``hbloop watch`` commands.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import socket
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis

from hbloop.core.backoff import Backoff
from hbloop.net.loop import EventLoop, Timer, call_guarded

log = logging.getLogger("hbloop.redis")

DEFAULT_PORT = 6379

# Commands queued or awaiting replies, at most. Presence sends one command per connect
# and per disconnect. When a node's clients all drop at once (a network blip, a load
# balancer failover), their leaves leave in a few loop iterations, thousands at a time,
# faster than Redis answers: the bound lets a whole node's burst through (about 20,000
# connections with the default descriptor limit) and otherwise only bites when Redis
# stalls, capping the backlog at about 30 MB (some 900 bytes a command, measured with
# its encoding and its callbacks).
MAX_PENDING_COMMANDS = 32_768

# Commands other than ``first`` ones (presence's joins, leaves and resyncs) are written
# only while fewer than this many are sent and unanswered; a ``first`` command (the
# lease renewal) is written at once, so that it waits at Redis behind at most this
# many of its node's (200,000 leaves queued at once took the lease past its TTL: issue
# 20). With 1,024, Redis sharing two starved cores answered 13 nodes' renewals up to
# 15 s late during a 4,000/s ramp of joins (52 leases unconfirmed past their TTL in
# one `--storm leave --redis` run of 200,000; none with 128). 128 still keep a node's
# pipeline full across a loaded machine's round trip: 12,800 commands a second at
# 10 ms, more than a node is ever asked for.
MAX_IN_FLIGHT = 128

# A command unanswered this long means that Redis (or the path to it) is stopped: the
# connection is dropped and made anew. Redis answers in well under a millisecond; a
# few seconds tolerate a slow fork or a long script without flapping.
REPLY_TIMEOUT = 5.0

# How long a TCP connect to Redis may take.
CONNECT_TIMEOUT = 5.0

# Reconnect back-off, full jitter: n-th retry after U(0, min(cap, base x 2^n)). Short,
# because presence must be whole again within seconds of Redis' return (the bench's
# target is 5 s) and one connection a second per process costs Redis nothing.
RECONNECT_BASE = 0.1
RECONNECT_CAP = 2.0

# Bytes taken by one recv(): a reply to a large read (who, a resync) comes in a few.
READ_CHUNK = 256 * 1024

Reply = Any  # a decoded RESP value, a hiredis.ReplyError, or RedisUnavailable
ReplyCallback = Callable[[Reply], None]

_INCOMPLETE = object()  # hiredis' "no complete reply yet" (False is a valid RESP3 reply)


class RedisUnavailable(ConnectionError):
    """Given to the callback of a command whose connection was lost before its reply,
    and raised by ``BlockingRedis``: the command may or may not have run."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis listens: from ``redis://[[user]:password@]host[:port][/db]`` or
    ``unix:///path/to/socket[?db=N]``."""

    family: int
    target: str | tuple[str, int]
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:  # for log lines: never the password
        if isinstance(self.target, str):
            return f"unix://{self.target}" + (f"?db={self.db}" if self.db else "")
        host, port = self.target
        return f"redis://{host}:{port}" + (f"/{self.db}" if self.db else "")


def parse_url(url: str) -> RedisAddress:
    """A ``RedisAddress``; ValueError with a readable message if ``url`` is not one."""
    parts = urllib.parse.urlsplit(url)
    password = urllib.parse.unquote(parts.password) if parts.password else None
    username = urllib.parse.unquote(parts.username) if parts.username else None
    try:
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL needs a socket path")
            query = urllib.parse.parse_qs(parts.query)
            db = _database(query.get("db", ["0"])[0])
            return RedisAddress(socket.AF_UNIX, parts.path, db, username, password)
        if parts.scheme == "redis":
            if not parts.hostname:
                raise ValueError("a redis:// URL needs a host")
            target = (parts.hostname, _port(parts))
            db = _database(parts.path.strip("/"))
            return RedisAddress(socket.AF_INET, target, db, username, password)
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {url!r}: {exc}") from None
    raise ValueError(f"bad Redis URL {url!r}: use redis://host:port/db or unix:///path?db=N")


def _port(parts: urllib.parse.SplitResult) -> int:
    try:
        port = parts.port  # ValueError for a word, or a number out of 0-65535
    except ValueError:
        port = 0
    if port is None:
        return DEFAULT_PORT
    if not 1 <= port <= 65535:
        text = parts.netloc.rpartition(":")[2]
        raise ValueError(f"the port {text!r} is not a number from 1 to 65535")
    return port


def _database(text: str) -> int:
    """A database number, 0 if none is given (Redis has databases 0 to 15 unless its
    ``databases`` setting says otherwise)."""
    if not text:
        return 0
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"the database {text!r} is not a whole number (0 or more)")
    return int(text)


def handshake_commands(address: RedisAddress, client_name: str) -> list[tuple[Any, ...]]:
    """What a connection says first: RESP3 (with credentials) and its database."""
    hello: list[Any] = ["HELLO", 3]
    if address.password is not None:
        hello += ["AUTH", address.username or "default", address.password]
    hello += ["SETNAME", client_name]
    commands: list[tuple[Any, ...]] = [tuple(hello)]
    if address.db:
        commands.append(("SELECT", address.db))
    return commands


def _open_socket(address: RedisAddress) -> socket.socket:
    if isinstance(address.target, str):
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host, port = address.target
    family, kind, proto, _, _ = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _connect_target(address: RedisAddress) -> str | tuple[str, int]:
    if isinstance(address.target, str):
        return address.target
    host, port = address.target
    resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4]
    return str(resolved[0]), int(resolved[1])


def is_noscript(reply: Reply) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


@dataclass(frozen=True)
class Script:
    """A Lua script, run by its SHA1 once loaded."""

    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


class _State:
    IDLE = "idle"  # waiting to reconnect
    CONNECTING = "connecting"
    HANDSHAKE = "handshake"  # connected; HELLO and SCRIPT LOADs not all answered
    READY = "ready"
    CLOSED = "closed"


class RedisLink:
    """One Redis connection on ``loop``, remade whenever it is lost.

    ``on_ready()`` runs each time a connection is ready (after HELLO, SELECT and the
    script loads); ``on_lost(reason)`` each time a ready or connecting one is lost;
    ``on_push(message)`` for each RESP3 push (pub/sub) message. ``channels`` are
    subscribed to on every connection. ``reconnect_cap`` caps the reconnect back-off
    (presence keeps it under a third of its lease, so a node is back in time to renew).
    """

    def __init__(
        self,
        loop: EventLoop,
        address: RedisAddress,
        *,
        client_name: str,
        on_ready: Callable[[], None],
        on_lost: Callable[[str], None],
        on_push: Callable[[list[Any]], None] | None = None,
        on_script_flush: Callable[[], None] | None = None,
        scripts: Iterable[Script] = (),
        channels: Sequence[str] = (),
        max_pending: int = MAX_PENDING_COMMANDS,
        reply_timeout: float = REPLY_TIMEOUT,
        reconnect_cap: float = RECONNECT_CAP,
    ) -> None:
        self.loop = loop
        self.address = address
        self.client_name = client_name
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.on_push = on_push
        self.on_script_flush = on_script_flush
        self.scripts = list(scripts)
        self.channels = list(channels)
        self.max_pending = max_pending
        self.reply_timeout = reply_timeout
        self.backoff = Backoff(RECONNECT_BASE, max(RECONNECT_BASE, reconnect_cap))
        self.state = _State.IDLE
        #: Counters for presence's metrics.
        self.connects = 0
        self.disconnects = 0
        self.refused = 0  # calls refused because the backlog was full
        self.noscript = 0
        self._sock: socket.socket | None = None
        self._fd = -1
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self._out = bytearray()
        self._pending: deque[ReplyCallback] = deque()  # sent, awaiting their replies
        self._queued: deque[tuple[ReplyCallback, tuple[Any, ...]]] = deque()  # not yet sent
        self._flush_scheduled = False
        self._writing = False
        self._timer: Timer | None = None
        self._progress = 0.0  # last time a reply arrived, or the backlog became non-empty
        self._retry: Timer | None = None
        self._down_since: float | None = None  # when the current outage began
        self._attempts = 0  # connection attempts in the current outage

    # --- the caller's view ----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == _State.READY

    @property
    def backlog(self) -> int:
        """Commands queued or sent and not yet answered."""
        return len(self._pending) + len(self._queued)

    def start(self) -> None:
        self._connect()

    def take_replies(self) -> None:
        """Read the replies already waiting on the connection. The loop reports ready
        sockets in the kernel's order, a few hundred an iteration: behind thousands of
        closing peers (a mass disconnect) a reply waits seconds for its turn, so
        whoever judges Redis' silence reads first."""
        if self._pending and self.state in (_State.HANDSHAKE, _State.READY):
            self._on_readable()

    def call(self, callback: ReplyCallback, *args: Any, first: bool = False) -> bool:
        """Queue a command; ``callback(reply)`` runs when it is answered or lost.
        False (and no callback, ever) when not ready or the backlog is full. A ``first``
        command is written ahead of those queued (MAX_IN_FLIGHT)."""
        if self.state != _State.READY or self.backlog >= self.max_pending:
            self.refused += 1
            return False
        if first:
            self._send(callback, args)
        else:
            self._queued.append((callback, args))
            self._schedule_flush()
        return True

    def run(
        self,
        script: Script,
        keys: Sequence[Any],
        args: Sequence[Any],
        callback: ReplyCallback,
        first: bool = False,
    ) -> bool:
        """``call`` of EVALSHA, with EVAL as the fallback if Redis lost the script."""

        def answered(reply: Reply) -> None:
            if is_noscript(reply) and self.state == _State.READY:
                self.noscript += 1
                log.warning("redis: script cache was flushed; falling back to EVAL")
                self._send(callback, ("EVAL", script.source, len(keys), *keys, *args))
                if self.on_script_flush is not None:
                    call_guarded(log, "on_script_flush", self.on_script_flush)
                return
            callback(reply)

        return self.call(answered, "EVALSHA", script.sha, len(keys), *keys, *args, first=first)

    def drain(self, timeout: float) -> bool:
        """Run the loop until every command is answered (or ``timeout`` passes)."""
        return self.loop.run_until(lambda: not self.backlog or not self.ready, timeout)

    def close(self) -> None:
        """Drop the connection for good; waiting callbacks get RedisUnavailable."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._drop("closed", _State.CLOSED)

    # --- connecting -------------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        self._attempts += 1
        try:
            sock = _open_socket(self.address)
            sock.setblocking(False)
            err = sock.connect_ex(_connect_target(self.address))
        except OSError as exc:
            self._attempt_failed(exc.strerror or str(exc))
            return
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            sock.close()
            self._attempt_failed(errno.errorcode.get(err, str(err)))
            return
        self._sock = sock
        self._fd = sock.fileno()
        self.state = _State.CONNECTING
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self.loop.add_writer(self._fd, self._on_connected)
        self._arm(self.loop.now + CONNECT_TIMEOUT)

    def _on_connected(self) -> None:
        assert self._sock is not None
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(errno.errorcode.get(err, str(err)))
            return
        self.loop.remove_writer(self._fd)
        self.loop.add_reader(self._fd, self._on_readable)
        self.state = _State.HANDSHAKE
        if self._timer is not None:  # the connect deadline; replies are watched from now
            self._timer.cancel()
            self._timer = None
        for command in handshake_commands(self.address, self.client_name):
            self._send(self._handshake_step, command)
        for script in self.scripts:
            self._send(self._handshake_step, ("SCRIPT", "LOAD", script.source))
        self._send(self._handshake_done, ("PING",))

    def _handshake_step(self, reply: Reply) -> None:
        if isinstance(reply, hiredis.ReplyError):
            # A refusal (bad password, no such database) will not mend itself without
            # someone's help: an error, once per outage; the retries go on quietly.
            level = logging.ERROR if self._down_since is None else logging.DEBUG
            log.log(level, "redis: %s refused the handshake: %s", self.address, reply)
            self._fail(f"handshake refused: {reply}")

    def _handshake_done(self, reply: Reply) -> None:
        if self.state != _State.HANDSHAKE:
            return
        self.state = _State.READY
        self.connects += 1
        self.backoff.reset()
        if self._down_since is None:
            log.info("redis: connected to %s as %s", self.address, self.client_name)
        else:
            log.warning(
                "redis: connected to %s again after %.1fs down (%d attempts)",
                self.address,
                self.loop.now - self._down_since,
                self._attempts,
            )
        self._down_since = None
        self._attempts = 0
        if self.channels:
            # Under RESP3 the confirmations are push messages, not replies.
            self._out += hiredis.pack_command(("SUBSCRIBE", *self.channels))  # type: ignore[arg-type]
            self._schedule_flush()
        call_guarded(log, "on_ready", self.on_ready)

    def _attempt_failed(self, reason: str) -> None:
        delay = self.backoff.next_delay()
        if self._down_since is None:
            self._down_since = self.loop.now
            log.warning(
                "redis: cannot reach %s: %s; presence paused (heartbeats are not "
                "affected), retrying with back-off",
                self.address,
                reason,
            )
        else:
            log.debug("redis: attempt %d failed: %s; next in %.2fs", self._attempts, reason, delay)
        self._retry = self.loop.call_later(delay, self._connect)

    def _fail(self, reason: str) -> None:
        """The connection (or the attempt) is lost: drop it and try again later."""
        was = self.state
        self._drop(reason, _State.IDLE)
        if was == _State.READY:
            self.disconnects += 1
            self._down_since = self.loop.now
            self._attempts = 0
            log.warning(
                "redis: lost the connection to %s: %s; presence paused (heartbeats are "
                "not affected), reconnecting with back-off",
                self.address,
                reason,
            )
            self._retry = self.loop.call_later(self.backoff.next_delay(), self._connect)
        else:
            self._attempt_failed(reason)
        if was == _State.READY:
            call_guarded(log, "on_lost", self.on_lost, reason)

    def _drop(self, reason: str, state: str) -> None:
        self.state = state
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self.loop.forget_fd(self._fd)
            self._sock.close()
            self._sock = None
            self._fd = -1
        self._out.clear()
        self._writing = False
        pending, self._pending = self._pending, deque()
        queued, self._queued = self._queued, deque()
        lost = RedisUnavailable(reason)
        for callback in (*pending, *(callback for callback, _ in queued)):
            call_guarded(log, "reply callback", callback, lost)

    # --- I/O --------------------------------------------------------------------------

    def _send(self, callback: ReplyCallback, args: tuple[Any, ...]) -> None:
        self._pack(callback, args)
        self._schedule_flush()

    def _pack(self, callback: ReplyCallback, args: tuple[Any, ...]) -> None:
        """Put a command in the output buffer and its callback in line for a reply."""
        if not self._pending:
            self._progress = self.loop.now
            if self._timer is None:
                self._arm(self._progress + self.reply_timeout)
        self._pending.append(callback)
        self._out += hiredis.pack_command(args)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued = self._queued
        if queued and self.state == _State.READY:
            for _ in range(min(MAX_IN_FLIGHT - len(self._pending), len(queued))):
                self._pack(*queued.popleft())  # the rest as replies make room
        if not self._writing and self._out and self._sock is not None:
            self._write()

    def _write(self) -> None:
        assert self._sock is not None
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            return
        del self._out[:sent]
        if self._out and not self._writing:
            self._writing = True
            self.loop.add_writer(self._fd, self._write)
        elif not self._out and self._writing:
            self._writing = False
            self.loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            return
        if not data:
            self._fail("closed by Redis")
            return
        reader = self._reader
        reader.feed(data)
        # The clock now, not the iteration's: work after this read in a starved
        # iteration must not make the reply look late to the watchdog.
        self._progress = self.loop.refresh_now()
        while self._sock is not None:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(f"protocol error: {exc}")
                return
            if reply is _INCOMPLETE:
                return
            if isinstance(reply, hiredis.PushNotification):
                if self.on_push is not None:
                    call_guarded(log, "on_push", self.on_push, reply)
            elif self._pending:
                call_guarded(log, "reply callback", self._pending.popleft(), reply)
                if self._queued:
                    self._schedule_flush()  # room in flight for the queued
            else:
                self._fail("a reply to no command")
                return

    # --- the one timer: connect deadline and reply watchdog -----------------------------

    def _arm(self, when: float) -> None:
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.state == _State.CONNECTING:
            self._fail(f"connect timed out after {CONNECT_TIMEOUT:g}s")
            return
        if not self._pending:
            return
        if self.loop.now >= self._progress + self.reply_timeout:
            self.take_replies()  # what came while this process was busy is progress
            if not self._pending or self._timer is not None:
                return  # all answered, or the connection failed, or a new timer is armed
        due = self._progress + self.reply_timeout
        if self.loop.now >= due:
            self._fail(f"no reply for {self.reply_timeout:g}s")
        else:
            self._arm(due)


class BlockingRedis:
    """A plain blocking connection, for command-line tools: ``execute`` sends commands
    pipelined and returns their replies (push messages are skipped)."""

    def __init__(self, address: RedisAddress, timeout: float, client_name: str) -> None:
        self.address = address
        try:
            self.sock = _open_socket(address)
            self.sock.settimeout(timeout)
            self.sock.connect(_connect_target(address))
        except OSError as exc:
            raise RedisUnavailable(f"cannot reach {address}: {exc.strerror or exc}") from None
        self.reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        for reply in self.execute(*handshake_commands(address, client_name)):
            if isinstance(reply, hiredis.ReplyError):
                self.close()
                raise RedisUnavailable(f"{address} refused the handshake: {reply}")

    def execute(self, *commands: Sequence[Any]) -> list[Reply]:
        try:
            self.sock.sendall(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
            replies: list[Reply] = []
            while len(replies) < len(commands):
                reply = self.reader.gets()
                if reply is _INCOMPLETE:
                    data = self.sock.recv(READ_CHUNK)
                    if not data:
                        raise RedisUnavailable(f"{self.address} closed the connection")
                    self.reader.feed(data)
                elif not isinstance(reply, hiredis.PushNotification):
                    replies.append(reply)
            return replies
        except OSError as exc:
            raise RedisUnavailable(f"{self.address}: {exc.strerror or exc}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
