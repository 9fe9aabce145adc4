"""Statistics: /metrics against a known workload, the periodic stats line, /healthz,
and an HTTP endpoint that bad requests, idle connections and descriptor exhaustion
do not hurt."""

from __future__ import annotations

import http
import json
import platform
import signal
import socket
import time

import pytest

from hbloop import __version__
from hbloop.client import Client
from hbloop.core.histogram import Buckets
from hbloop.core.session import HEARTBEAT_BUCKETS
from hbloop.core.wire import FrameType, encode_hello
from hbloop.net.loop import EventLoop
from hbloop.ops.metrics import MAX_EXCHANGES, MAX_REQUEST_BYTES, REQUEST_TIMEOUT, parse_request
from hbloop.ops.stats import LAG_BUCKETS, SAMPLE_PERIOD

from conftest import (
    WAIT_TIMEOUT,
    http_get,
    metrics_address,
    scrape,
    wait_for,
    wait_for_metrics,
)

# The workload: heartbeating peers, and peers that say HELLO and then nothing. The
# silent ones ask for a 2 s interval, so their timeout (3 intervals: 6 s) leaves ample
# time to see them connected before they are closed.
LIVE = 5
SILENT = 3
SILENT_INTERVAL_MS = 2000

FAST = ("--interval", "0.5", "--timeout", "1.5")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_count_a_known_workload(serve, good_peers, raw_peer, workers):
    server = serve(*FAST, "--workers", workers, "--metrics-port", "0")
    metrics = metrics_address(server)
    live = good_peers(server.address, count=LIVE)
    for i in range(SILENT):
        frame_type, _ = raw_peer(server.address).hello(f"silent-{i}", SILENT_INTERVAL_MS)
        assert frame_type == FrameType.WELCOME

    connected = wait_for_metrics(
        metrics,
        {"hbloop_connections": LIVE + SILENT, "hbloop_accepted_total": LIVE + SILENT},
    )
    assert connected['hbloop_closed_total{reason="timeout"}'] == 0
    # The series of --workers come only with it.
    assert connected.get("hbloop_workers") == (None if workers == "1" else int(workers))

    after = wait_for_metrics(
        metrics,
        {
            'hbloop_closed_total{reason="timeout"}': SILENT,
            "hbloop_connections": LIVE,
            "hbloop_connections_peak": LIVE + SILENT,
        },
    )
    live.assert_served(server)
    assert after["hbloop_heartbeats_total"] > 0
    assert after["hbloop_in_frames_total"] >= after["hbloop_heartbeats_total"] + LIVE + SILENT
    assert after["hbloop_out_bytes_total"] > after["hbloop_out_frames_total"] > 0
    assert after["hbloop_in_bytes_total"] > after["hbloop_in_frames_total"]
    assert after["hbloop_loop_iterations_total"] > 0
    assert 0 <= after["hbloop_loop_lag_max_seconds"] < WAIT_TIMEOUT
    # One lag observation per worker per sample period, cumulative buckets.
    assert after["hbloop_loop_lag_seconds_count"] >= int(workers)
    assert (
        after['hbloop_loop_lag_seconds_bucket{le="+Inf"}'] == after["hbloop_loop_lag_seconds_count"]
    )
    assert (
        after['hbloop_loop_lag_seconds_bucket{le="0.001"}']
        <= after['hbloop_loop_lag_seconds_bucket{le="5.0"}']
    )
    per_worker = [n for key, n in after.items() if key.startswith("hbloop_worker_connections{")]
    # Per worker only with --workers (N >= 2), as hbloop_workers.
    assert per_worker == [] if workers == "1" else len(per_worker) == 2 and sum(per_worker) == LIVE
    # The standard series: build info, and the process that answers (and each worker).
    build = f'hbloop_build_info{{python="{platform.python_version()}",version="{__version__}"}}'
    assert after[build] == 1
    assert after["process_cpu_seconds_total"] > 0
    assert after["process_open_fds"] > 0
    assert any(key.startswith("python_info{") for key in after)
    worker_cpu = [k for k in after if k.startswith("hbloop_worker_process_cpu_seconds_total{")]
    assert len(worker_cpu) == (int(workers) if workers != "1" else 0)


def test_stats_line_is_logged_every_interval(serve, raw_peer):
    server = serve(*FAST, "--stats-interval", "0.3")
    peers = [raw_peer(server.address) for _ in range(2)]
    for peer in peers:
        assert peer.hello("counted", 1000)[0] == FrameType.WELCOME
    line = server.wait_line(r"stats conns=2 peak=2 accepted=2 closed=\{\} .*")
    assert "lag_max=" in line.group(0) and "hb=0" in line.group(0)
    peers[0].close()
    server.wait_line(r"stats conns=1 peak=2 accepted=2 closed=\{peer_closed:1\}")


def test_stats_line_is_off_at_zero(serve, raw_peer):
    server = serve(*FAST, "--stats-interval", "0", "--metrics-port", "0")
    metrics = metrics_address(server)
    assert raw_peer(server.address).hello("quiet", 1000)[0] == FrameType.WELCOME
    wait_for_metrics(metrics, {"hbloop_connections": 1})
    assert not server.find(r"stats "), "a stats line despite --stats-interval 0"


def _exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send raw bytes to the metrics port and read the answer to EOF."""
    with socket.create_connection(address, timeout=WAIT_TIMEOUT) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_bad_http_requests_are_answered_and_harmless(serve, raw_peer):
    server = serve(*FAST, "--metrics-port", "0")
    metrics = metrics_address(server)
    assert http_get(metrics, "/")[0] == 404
    assert _exchange(metrics, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _exchange(metrics, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert _exchange(metrics, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000).startswith(
        b"HTTP/1.1 431 "
    )
    with socket.create_connection(metrics, timeout=WAIT_TIMEOUT) as silent:
        silent.sendall(b"GET /metr")  # and never the rest, while others are served
        assert raw_peer(server.address).hello("after", 1000)[0] == FrameType.WELCOME
        assert scrape(metrics)["hbloop_connections"] == 1
    assert server.proc.poll() is None


def test_a_request_with_bare_lf_line_endings_is_answered(serve):
    """RFC 9112 section 2.2 lets a recipient take a bare LF for a line's end; earlier,
    such a request waited for a CRLF CRLF that never came, and was closed silently
    when its deadline passed."""
    server = serve(*FAST, "--metrics-port", "0")
    metrics = metrics_address(server)
    answer = _exchange(metrics, b"GET /metrics HTTP/1.1\nHost: x\n\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    assert b"\nhbloop_connections 0.0\n" in answer
    # An empty line before the request, and line ends of both kinds.
    health = _exchange(metrics, b"\r\nGET /healthz HTTP/1.0\r\nHost: x\n\r\n")
    assert health.startswith(b"HTTP/1.1 200 ") and b'"status": "serving"' in health


# Openings of other protocols: binary ones, refused at their first byte that a request
# line cannot hold, and a line of text that is not a request line.
NOT_HTTP = (
    encode_hello("probe", 1000),  # a heartbeat client on the wrong port
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello
    b"SSH-2.0-OpenSSH_9.2p1\r\n",
)


def test_what_is_not_http_gets_400_at_once(serve, raw_peer):
    server = serve(*FAST, "--metrics-port", "0")
    metrics = metrics_address(server)
    for opening in NOT_HTTP:
        started = time.monotonic()
        answer = _exchange(metrics, opening)  # which leaves its sending side open
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (opening, answer)
        assert time.monotonic() - started < REQUEST_TIMEOUT, opening
    assert raw_peer(server.address).hello("after", 1000)[0] == FrameType.WELCOME


# A body far larger than one read and than the socket buffers: most of it is still on
# its way when the endpoint answers.
UNREAD_BODY = 1 << 20


def test_an_answer_is_not_lost_to_a_reset(serve):
    """A request whose body the endpoint never reads: closing the socket with input
    unread would reset the connection under the client, answer and all; the
    endpoint half-closes and reads on until the client is done."""
    server = serve(*FAST, "--metrics-port", "0")
    metrics = metrics_address(server)
    head = b"POST /metrics HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % UNREAD_BODY
    answer = _exchange(metrics, head + b"x" * UNREAD_BODY)
    assert answer.startswith(b"HTTP/1.1 405 "), answer[:100]


TOO_LARGE = http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


@pytest.mark.parametrize(
    ("data", "parsed"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", (b"GET", b"/metrics")),
        (b"GET /metrics HTTP/1.1\nHost: x\n\n", (b"GET", b"/metrics")),
        (b"\r\n\nGET\t/healthz?x=1  HTTP/1.0\r\n\r\n", (b"GET", b"/healthz?x=1")),
        (b"POST / HTTP/1.1\n\r\nbody", (b"POST", b"/")),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", None),  # the head goes on
        (b"GET /metr", None),
        (b"", None),
        (b"GET /metrics HTTP/2.0\r\n", http.HTTPStatus.BAD_REQUEST),  # at the line's end
        (b"GET /a b HTTP/1.1\n", http.HTTPStatus.BAD_REQUEST),
        (b"GET /metrics\x00", http.HTTPStatus.BAD_REQUEST),  # before it
        (b"GET\r/ HTTP/1.1", http.HTTPStatus.BAD_REQUEST),
        (b"GET / HTTP/1.1\n" + b"a" * MAX_REQUEST_BYTES, TOO_LARGE),
    ],
)
def test_request_heads_are_parsed_as_rfc_9112_allows(data, parsed):
    assert parse_request(data) == parsed


def test_total_peak_counts_connections_nobody_scraped(serve, raw_peer):
    """The supervisor tracks the total peak from the workers' snapshots, so a crowd
    that came and went between two scrapes still shows in it."""
    server = serve(*FAST, "--workers", "2", "--metrics-port", "0")
    metrics = metrics_address(server)
    crowd = [raw_peer(server.address) for _ in range(LIVE)]
    for i, peer in enumerate(crowd):
        assert peer.hello(f"crowd-{i}")[0] == FrameType.WELCOME
    # Stay connected across one worker snapshot; no scrape may observe the crowd.
    time.sleep(SAMPLE_PERIOD * 2)
    for peer in crowd:
        peer.close()
    after = wait_for_metrics(metrics, {"hbloop_accepted_total": LIVE, "hbloop_connections": 0})
    assert after["hbloop_connections_peak"] == LIVE


@pytest.mark.parametrize("workers", ["1", "2"])
def test_healthz_serves_200_then_503_while_shutting_down(serve, raw_peer, workers):
    # A long grace and a peer that never closes: the shutdown lasts until we let go.
    server = serve(*FAST, "--workers", workers, "--metrics-port", "0", "--shutdown-grace", "60")
    metrics = metrics_address(server)
    peer = raw_peer(server.address)
    assert peer.hello("lingering")[0] == FrameType.WELCOME
    expected = {
        "status": "serving",
        "version": __version__,
        "connections": 1,
        "workers": int(workers),
    }

    # A worker counts once its first snapshot is in (SAMPLE_PERIOD after it started):
    # on a busy machine the peer's worker may report before the other one has.
    def healthz() -> tuple[int, object]:
        status, body = http_get(metrics, "/healthz")
        return status, json.loads(body)

    assert wait_for(lambda: healthz() == (200, expected)), healthz()

    server.signal(signal.SIGTERM)
    assert peer.recv()[0] == FrameType.CLOSE  # GOING_AWAY: the shutdown has begun
    status, body = http_get(metrics, "/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "stopping"
    peer.close()
    assert server.wait() == 0


def test_idle_connections_do_not_lock_out_scrapes(serve):
    server = serve(*FAST, "--metrics-port", "0")
    metrics = metrics_address(server)
    idle = [socket.create_connection(metrics, timeout=WAIT_TIMEOUT) for _ in range(MAX_EXCHANGES)]
    try:
        idle[-1].sendall(b"GET /metr")  # half a request, and never the rest
        # Every slot is held, yet a scrape is answered at once (well inside the
        # idle connections' request deadline), and the oldest idle one made room.
        started = time.monotonic()
        assert scrape(metrics)["hbloop_connections"] == 0
        assert time.monotonic() - started < 1.0
        assert idle[0].recv(1) == b"", "the oldest idle connection was not evicted"
    finally:
        for sock in idle:
            sock.close()


# Out of descriptors: the process's limit, and how many connections fill it.
FD_LIMIT = 64
FLOOD_CONNECTIONS = 2 * FD_LIMIT
# A listener that spins on EMFILE logs a warning per loop iteration: thousands a
# second. The acceptor logs at most one a second; the run below takes a few.
MAX_METRICS_WARNINGS = 5


def test_metrics_out_of_descriptors_answers_503_without_spinning(serve):
    server = serve(
        *FAST,
        "--metrics-port",
        "0",
        "--handshake-timeout",
        "60",  # the flood stays accepted, holding descriptors
        prefix=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}"],
    )
    metrics = metrics_address(server)
    flood: list[socket.socket] = []
    try:
        for _ in range(FLOOD_CONNECTIONS):
            flood.append(socket.create_connection(server.address, timeout=WAIT_TIMEOUT))
        server.wait_line(r"hbloop\.server: Too many open files: shed \d+ connections")
        with socket.create_connection(metrics, timeout=WAIT_TIMEOUT) as scraper:
            scraper.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            answer = scraper.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert answer.endswith(b"out of file descriptors")
        server.wait_line(r"metrics: Too many open files: shed 1 connections")
    finally:
        for sock in flood:
            sock.close()
    # Descriptors free up as the flood leaves: scrapes are served again.
    assert wait_for(lambda: http_get(metrics, "/metrics")[0] == 200)
    warnings = server.find(r"metrics: .*Too many open files")
    assert 1 <= len(warnings) <= MAX_METRICS_WARNINGS, warnings
    assert server.proc.poll() is None


def test_histogram_buckets_are_upper_bounds_and_add_up():
    lag = Buckets(LAG_BUCKETS)
    for value in (0.0, 0.001, 0.0011, 3.0, 60.0):
        lag.observe(value)
    # A value equal to a bound belongs to that bucket, as Prometheus' "le" says.
    assert lag.counts[0] == 2  # 0.0 and 0.001
    assert lag.counts[1] == 1  # 0.0011 <= 0.002
    assert lag.counts[LAG_BUCKETS.index(5.0)] == 1  # 3.0
    assert lag.counts[-1] == 1  # 60 s: past the last bound
    assert lag.sum == pytest.approx(63.0021)
    beats = Buckets(HEARTBEAT_BUCKETS)
    for value in (10.0, 10.004, 29.0):
        beats.observe(value)
    assert beats.counts[HEARTBEAT_BUCKETS.index(10.0)] == 1
    assert beats.counts[HEARTBEAT_BUCKETS.index(15.0)] == 1  # an on-time 10 s heartbeat
    assert beats.counts[HEARTBEAT_BUCKETS.index(30.0)] == 1
    # Workers' histograms add up bucket by bucket, and only with the same bounds.
    both = beats.copy()
    both.add(beats)
    assert both.counts == [2 * n for n in beats.counts]
    assert both.sum == pytest.approx(2 * beats.sum)
    with pytest.raises(ValueError, match="added to buckets"):
        lag.add(beats)


# Peers heartbeating at a known interval, for the heartbeat histogram: 0.4 s lies in
# the middle of its bucket (0.3, 0.5], far from both bounds, so that neither the
# clients' timer lateness nor loopback jitter moves an on-time heartbeat out of it.
BEATING = 4
BEAT_INTERVAL = 0.4
BEATS_EACH = 4
# Share of heartbeats that must land in that bucket: one late one in ten is allowed
# for a stall of this shared machine.
ON_TIME_SHARE = 0.9
# How far the mean gap may stray from BEAT_INTERVAL. The gaps' sum telescopes to the
# last heartbeat's arrival less the first's, so a first one late by d takes d / count
# off the mean (on two busy cores: 0.39988 s over 16 gaps), and a last one late adds it.
MEAN_TOLERANCE = 0.02


def test_heartbeat_interval_histogram_shows_the_peers_interval(serve):
    """Clients that PING every 0.4 s, on two workers: the combined histogram has their
    heartbeats in the bucket (0.3, 0.5], none sooner, and equals the workers' sum."""
    server = serve("--interval", "1", "--timeout", "3", "--workers", "2", "--metrics-port", "0")
    metrics = metrics_address(server)
    loop = EventLoop()
    clients = [
        Client(*server.address, f"beat-{i}", interval=BEAT_INTERVAL, loop=loop, reconnect=False)
        for i in range(BEATING)
    ]
    for client in clients:
        client.start()
    try:
        assert loop.run_until(
            lambda: all(c.counters.copy().heartbeats >= BEATS_EACH for c in clients), WAIT_TIMEOUT
        )
        assert all(c.stopped is None for c in clients)
    finally:
        for client in clients:
            client.close()
        loop.run_until(lambda: all(c.done for c in clients), WAIT_TIMEOUT)
        loop.close()
    answered = sum(c.counters.copy().heartbeats for c in clients)  # PONGs: PINGs the server had

    name = "hbloop_heartbeat_interval_seconds"
    per_worker = "hbloop_worker_heartbeat_interval_seconds_count{"
    last: dict[str, float] = {}
    assert wait_for(lambda: last.update(scrape(metrics)) or last[f"{name}_count"] >= answered)
    count = last[f"{name}_count"]
    assert last[f'{name}_bucket{{le="0.3"}}'] == 0
    on_time = last[f'{name}_bucket{{le="0.5"}}']
    assert on_time >= ON_TIME_SHARE * count, f"{on_time} of {count} heartbeats within 0.5 s"
    assert abs(last[f"{name}_sum"] / count - BEAT_INTERVAL) < MEAN_TOLERANCE
    workers = [value for key, value in last.items() if key.startswith(per_worker)]
    assert len(workers) == 2 and sum(workers) == count
