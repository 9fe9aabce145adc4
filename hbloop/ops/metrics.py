"""``/metrics`` and ``/healthz``: hbloop's statistics and state, served by the loop.

prometheus_client fits the single-threaded design as a formatter
(``hbloop.ops.exposition``): collectors turn the latest snapshots (and /proc) into
metric families on each scrape, and ``generate_latest`` renders them synchronously,
on the loop, without a thread. Its own HTTP server (a thread per process) is not
used; a request is answered by
``MetricsEndpoint``, a small non-blocking HTTP/1.x responder on the same EventLoop:
read one request (bounded in size and time; CRLF or bare LF line ends, and what cannot
be HTTP refused at once), answer it, close.

Totals are named ``hbloop_*``; with ``--workers``, the same figures per worker are
``hbloop_worker_*`` with a ``worker`` label, kept apart so that ``sum()`` over either
never counts twice, and ``hbloop_workers`` and ``hbloop_restarts_total`` count them.
Beside them: ``hbloop_build_info``, prometheus_client's standard ``process_*`` (of
the process that answers: the lone server, or the supervisor) and ``python_info``,
and with workers ``hbloop_worker_process_*{worker}`` for each worker process.
"""

from __future__ import annotations

import http
import json
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hbloop.core.version import version
from hbloop.net.acceptor import Acceptor
from hbloop.net.loop import EventLoop
from hbloop.net.sockets import make_listener
from hbloop.ops.stats import Snapshot

log = logging.getLogger("hbloop.metrics")

# A request (line and headers) longer than this is refused: a Prometheus scrape is a
# few hundred bytes, and the bound keeps a misbehaving client from growing a buffer.
MAX_REQUEST_BYTES = 8192

# A client has this long to send its request, so that a silent one cannot hold a
# connection; Prometheus' default scrape timeout is 10 s and it sends at once.
REQUEST_TIMEOUT = 5.0

# Connections held at once. Prometheus holds one per target; the bound keeps metrics
# from eating the descriptors reserved for the server (policy.RESERVED_FDS). A
# newcomer beyond it evicts the oldest, so that idle connections cannot lock out a
# scrape: a scraper sends its request at once and is answered long before 16 newer
# connections could push it out.
MAX_EXCHANGES = 16

# What a connection gets when it is accepted only to be closed for lack of
# descriptors (see hbloop.acceptor).
UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 23\r\nConnection: close\r\n\r\n"
    b"out of file descriptors"
)

# A request line (RFC 9112 section 3): a method token, a target of visible ASCII and
# the version, split on spaces or tabs, ending in CRLF or a bare LF (section 2.2).
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]+([!-~]+)[ \t]+HTTP/1\.\d[ \t]*\r?")
# What a request line may hold before its end: anything else (a binary protocol, TLS)
# is not HTTP, and is answered at once rather than when the request deadline passes.
_LINE_SO_FAR = re.compile(rb"[\t -~]*\r?")
# The empty line that ends a request's head (CRLF or a bare LF).
_HEAD_END = re.compile(rb"\n\r?\n")

JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Report:
    """What a request shows: the totals, each worker's figures and process id, the
    supervisor's restarts, and whether the server is serving (not shutting down)."""

    total: Snapshot
    workers: dict[str, Snapshot]
    restarts: int = 0
    serving: bool = True
    pids: dict[str, int] = field(default_factory=dict)  # by worker, with a supervisor
    #: From a supervisor: the series of --workers (the count, restarts, per worker) are
    #: shown; a lone server has none, as it has no workers to tell apart.
    supervised: bool = True

    @classmethod
    def alone(cls, snapshot: Snapshot, serving: bool) -> Report:
        """The report of a server without a supervisor: one worker, the total."""
        return cls(snapshot, {"1": snapshot}, serving=serving, supervised=False)


class StartError(Exception):
    """A listener that cannot be opened, said in one line for the operator."""


def serve_metrics(
    loop: EventLoop, host: str, port: int, source: Callable[[], Report]
) -> MetricsEndpoint:
    """A MetricsEndpoint on host:port; raises StartError if it cannot listen."""
    try:
        return MetricsEndpoint(loop, host, port, source)
    except OSError as exc:
        raise StartError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None


class MetricsEndpoint:
    """An HTTP listener on ``loop`` answering ``GET /metrics`` and ``GET /healthz``
    from ``source()``."""

    def __init__(self, loop: EventLoop, host: str, port: int, source: Callable[[], Report]) -> None:
        # prometheus_client costs about 0.05 s of CPU to import, as much as a third of
        # an hbloop process's start: only a server with --metrics-port pays it.
        from hbloop.ops.exposition import CONTENT_TYPE, exposition

        self.loop = loop
        self.source = source
        self.render = exposition(source)
        self.content_type = CONTENT_TYPE
        # Ordered oldest first: a dict as an insertion-ordered set.
        self._exchanges: dict[_Exchange, None] = {}
        self._acceptor = Acceptor(
            loop,
            make_listener(host, port, MAX_EXCHANGES),
            self._adopt,
            batch=MAX_EXCHANGES,
            farewell=UNAVAILABLE,
            on_shed=lambda count: None,  # the warning says it; no figure counts scrapes
            log=log,
            label="metrics: ",
        )
        log.info("metrics on http://%s:%d/metrics", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        return self._acceptor.address

    def _adopt(self, sock: socket.socket, _address: tuple[str, int]) -> None:
        if len(self._exchanges) >= MAX_EXCHANGES:
            next(iter(self._exchanges)).close()  # the oldest
        self._exchanges[_Exchange(self, sock)] = None

    def answer(self, method: bytes, target: bytes) -> tuple[int, str, bytes]:
        """The status, content type and body for a request."""
        path = target.split(b"?", 1)[0]
        if path not in (b"/metrics", b"/healthz"):
            return http.HTTPStatus.NOT_FOUND, TEXT_CONTENT_TYPE, b"not found: try /metrics\n"
        if method != b"GET":
            return http.HTTPStatus.METHOD_NOT_ALLOWED, TEXT_CONTENT_TYPE, b"GET only\n"
        if path == b"/metrics":
            return http.HTTPStatus.OK, self.content_type, self.render()
        return self.health()

    def health(self) -> tuple[int, str, bytes]:
        """200 and ``{"status": "serving", ...}`` while serving; 503 and
        ``"stopping"`` once a shutdown has begun, so that a load balancer stops
        sending new connections. With presence on, ``presence`` says whether it is
        ``ok`` or ``degraded`` (and why: the reason most workers give); a degraded
        presence still answers 200, as heartbeats are served all the same."""
        report = self.source()
        body: dict[str, Any] = {
            "status": "serving" if report.serving else "stopping",
            "version": version(),
            "connections": report.total.server.connections,
            "workers": len(report.workers),
        }
        presence = report.total.presence
        if presence is not None:
            troubles = (+presence.degraded).most_common(1)  # (+: the non-zero ones)
            if troubles:
                body["presence"] = {"status": "degraded", "reason": troubles[0][0]}
            else:
                body["presence"] = {"status": "ok"}
        status = http.HTTPStatus.OK if report.serving else http.HTTPStatus.SERVICE_UNAVAILABLE
        return status, JSON_CONTENT_TYPE, json.dumps(body).encode() + b"\n"

    def discard(self, exchange: _Exchange) -> None:
        self._exchanges.pop(exchange, None)

    def close(self) -> None:
        for exchange in list(self._exchanges):
            exchange.close()
        self._acceptor.close()


def parse_request(data: bytes) -> tuple[bytes, bytes] | http.HTTPStatus | None:
    """The method and target of the request whose head ``data`` begins; the error to
    answer if it is not one (or no longer fits MAX_REQUEST_BYTES); None while it may
    still come. Empty lines before the request line are skipped (RFC 9112 section 2.2),
    and the headers are not looked at."""
    head = data.lstrip(b"\r\n")
    end = head.find(b"\n")
    if end < 0:
        if not _LINE_SO_FAR.fullmatch(head):
            return http.HTTPStatus.BAD_REQUEST
    else:
        line = _REQUEST_LINE.fullmatch(head, 0, end)
        if line is None:
            return http.HTTPStatus.BAD_REQUEST
        if _HEAD_END.search(head, end):
            return line[1], line[2]
    if len(data) > MAX_REQUEST_BYTES:
        return http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    return None


_ERRORS = {
    http.HTTPStatus.BAD_REQUEST: b"bad request\n",
    http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: b"request too large\n",
}


class _Exchange:
    """One connection: read a request, send the answer, close.

    Once the answer is sent the connection is half-closed and read until the client
    closes it (or the request deadline passes): closing a socket with input unread
    makes the kernel reset the connection, and a client can lose the answer to that
    reset before it reads it."""

    def __init__(self, endpoint: MetricsEndpoint, sock: socket.socket) -> None:
        self.endpoint = endpoint
        self.loop = endpoint.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.request = b""
        self.answered = False
        self.out = memoryview(b"")
        sock.setblocking(False)
        self.timer = self.loop.call_later(REQUEST_TIMEOUT, self.close)
        self.loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(MAX_REQUEST_BYTES)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        if self.answered:
            return  # dropped: see the class's docstring
        self.request += data
        request = parse_request(self.request)
        if isinstance(request, tuple):
            self._respond(*self.endpoint.answer(*request))
        elif request is not None:
            self._respond(request, TEXT_CONTENT_TYPE, _ERRORS[request])

    def _respond(self, status: int, content_type: str, body: bytes) -> None:
        self.answered = True
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        self.out = memoryview(head.encode("ascii") + body)
        self._on_writable()

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        self.out = self.out[sent:]
        if self.out:
            self.loop.add_writer(self.fd, self._on_writable)
            return
        self.loop.remove_writer(self.fd)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()

    def close(self) -> None:
        self.timer.cancel()
        self.loop.forget_fd(self.fd)
        self.sock.close()
        self.endpoint.discard(self)
