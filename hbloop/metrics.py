"""``/metrics``: hbloop's statistics in the Prometheus text format, served by the loop.

prometheus_client fits the single-threaded design as a formatter: a collector turns
the latest snapshots into metric families on each scrape, and ``generate_latest``
renders them synchronously, on the loop, without a thread. Its own HTTP server (a
thread per process) is not used; a scrape is answered by ``MetricsEndpoint``, a small
non-blocking HTTP/1.x responder on the same EventLoop: read one request (bounded in
size and time), answer it, close.

Totals are named ``hbloop_*``; the same figures per worker are ``hbloop_worker_*``
with a ``worker`` label, kept apart so that ``sum()`` over either never counts twice.
"""

from __future__ import annotations

import http
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from hbloop.channel import Reason
from hbloop.loop import EventLoop
from hbloop.netutil import make_listener
from hbloop.presence import PRESENCE_FIGURES
from hbloop.stats import Snapshot

log = logging.getLogger("hbloop.metrics")

# A request (line and headers) longer than this is refused: a Prometheus scrape is a
# few hundred bytes, and the bound keeps a misbehaving client from growing a buffer.
MAX_REQUEST_BYTES = 8192

# A client has this long to send its request, so that a silent one cannot hold a
# connection; Prometheus' default scrape timeout is 10 s and it sends at once.
REQUEST_TIMEOUT = 5.0

# Scrapes served at once; more are closed unanswered. Prometheus holds one connection
# per target, and the bound keeps metrics from eating the descriptors reserved for
# the server (policy.RESERVED_FDS).
MAX_EXCHANGES = 16

# (snapshot key, metric name after the prefix, counter?, help)
_FIGURES = (
    ("connections", "connections", False, "Connections past the handshake, now."),
    ("peak", "connections_peak", False, "Most connections at once."),
    ("accepted", "accepted", True, "Sockets accepted, handshaken or not."),
    ("shed", "shed", True, "Sockets accepted and closed at once for lack of descriptors."),
    ("frames_in", "frames_in", True, "Frames received."),
    ("frames_out", "frames_out", True, "Frames sent."),
    ("bytes_in", "bytes_in", True, "Bytes received."),
    ("bytes_out", "bytes_out", True, "Bytes sent."),
    ("heartbeats", "heartbeats", True, "PING and PONG frames received."),
    ("iterations", "loop_iterations", True, "Event loop iterations."),
    ("lag_max", "loop_lag_max_seconds", False, "Worst lateness of a due timer, last interval."),
)


@dataclass(frozen=True)
class Report:
    """What a scrape shows: the totals, each worker's figures, and the supervisor's."""

    total: Snapshot
    workers: dict[str, Snapshot]
    restarts: int = 0

    @classmethod
    def alone(cls, snapshot: Snapshot) -> Report:
        """The report of a server without a supervisor: one worker, the total."""
        return cls(snapshot, {"1": snapshot})


Figures = tuple[tuple[str, str, bool, str], ...]  # (key, name, counter?, help)


def _table(
    figures: Figures, prefix: str, labels: list[str], rows: dict[tuple[str, ...], Snapshot]
) -> Iterator[Metric]:
    """One family per figure; ``rows`` maps the values of ``labels`` to snapshots."""
    for key, name, is_counter, doc in figures:
        kind = CounterMetricFamily if is_counter else GaugeMetricFamily
        family = kind(prefix + name, doc, labels=labels)
        for values, snapshot in rows.items():
            family.add_metric(list(values), snapshot[key])
        yield family


def _families(
    prefix: str, labels: list[str], rows: dict[tuple[str, ...], Snapshot]
) -> Iterator[Metric]:
    """The server's figures, then presence's where the snapshots have them."""
    yield from _table(_FIGURES, prefix, labels, rows)
    closed = CounterMetricFamily(
        prefix + "closed", "Connections closed, by reason.", labels=[*labels, "reason"]
    )
    for values, snapshot in rows.items():
        for reason in Reason:
            closed.add_metric([*values, reason.value], snapshot["closed"].get(reason.value, 0))
    yield closed
    presence = {values: s["presence"] for values, s in rows.items() if "presence" in s}
    if presence:
        yield from _table(PRESENCE_FIGURES, prefix + "presence_", labels, presence)


class _ReportCollector:
    def __init__(self, source: Callable[[], Report]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        report = self.source()
        yield from _families("hbloop_", [], {(): report.total})
        workers = GaugeMetricFamily("hbloop_workers", "Worker processes running.")
        workers.add_metric([], len(report.workers))
        yield workers
        restarts = CounterMetricFamily("hbloop_restarts", "Workers restarted after dying.")
        restarts.add_metric([], report.restarts)
        yield restarts
        per_worker = {(worker,): s for worker, s in report.workers.items()}
        yield from _families("hbloop_worker_", ["worker"], per_worker)


def exposition(source: Callable[[], Report]) -> Callable[[], bytes]:
    """A function rendering ``source()``'s report in the text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReportCollector(source))  # type: ignore[arg-type]
    return lambda: generate_latest(registry)


class MetricsEndpoint:
    """An HTTP listener on ``loop`` answering ``GET /metrics`` with ``render()``."""

    def __init__(self, loop: EventLoop, host: str, port: int, source: Callable[[], Report]) -> None:
        self.loop = loop
        self.render = exposition(source)
        self._listener = make_listener(host, port, MAX_EXCHANGES)
        self._exchanges: set[_Exchange] = set()
        loop.add_reader(self._listener.fileno(), self._accept)
        log.info("metrics on http://%s:%d/metrics", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def _accept(self) -> None:
        for _ in range(MAX_EXCHANGES):
            try:
                sock, _address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of descriptors, or reset before accept
                log.warning("metrics: accept failed: %s", exc.strerror or exc)
                return
            if len(self._exchanges) >= MAX_EXCHANGES:
                sock.close()
            else:
                self._exchanges.add(_Exchange(self, sock))

    def answer(self, head: bytes) -> tuple[int, bytes]:
        """The status and body for a request whose line and headers are ``head``."""
        parts = head.split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return http.HTTPStatus.BAD_REQUEST, b"bad request\n"
        method, target = parts[0], parts[1]
        if target.split(b"?", 1)[0] != b"/metrics":
            return http.HTTPStatus.NOT_FOUND, b"not found: try /metrics\n"
        if method != b"GET":
            return http.HTTPStatus.METHOD_NOT_ALLOWED, b"GET only\n"
        return http.HTTPStatus.OK, self.render()

    def discard(self, exchange: _Exchange) -> None:
        self._exchanges.discard(exchange)

    def close(self) -> None:
        for exchange in list(self._exchanges):
            exchange.close()
        self.loop.forget_fd(self._listener.fileno())
        self._listener.close()


class _Exchange:
    """One connection: read a request, send the answer, close."""

    def __init__(self, endpoint: MetricsEndpoint, sock: socket.socket) -> None:
        self.endpoint = endpoint
        self.loop = endpoint.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.request = bytearray()
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
        self.request += data
        end = self.request.find(b"\r\n\r\n")
        if end >= 0:
            self._respond(*self.endpoint.answer(bytes(self.request[:end])))
        elif len(self.request) > MAX_REQUEST_BYTES:
            self._respond(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request too large\n")

    def _respond(self, status: int, body: bytes) -> None:
        self.loop.remove_reader(self.fd)
        content_type = CONTENT_TYPE_LATEST if status == http.HTTPStatus.OK else "text/plain"
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
        else:
            self.close()

    def close(self) -> None:
        self.timer.cancel()
        self.loop.forget_fd(self.fd)
        self.sock.close()
        self.endpoint.discard(self)
