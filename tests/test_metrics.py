"""Statistics: /metrics against a known workload, the periodic stats line, and an
HTTP endpoint that bad requests do not hurt."""

from __future__ import annotations

import socket
import time

import pytest

from hbloop.stats import SAMPLE_PERIOD
from hbloop.wire import FrameType

from conftest import (
    WAIT_TIMEOUT,
    http_get,
    metrics_address,
    scrape,
    wait_for_metrics,
)

# The workload: heartbeating peers, and peers that say HELLO and then nothing. The
# silent ones ask for a 2 s interval, so their timeout (3 intervals: 6 s) leaves ample
# time to see them connected before they are closed.
LIVE = 5
SILENT = 3
SILENT_INTERVAL_MS = 2000

FAST = ("--interval", "0.5", "--timeout", "1.5")


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
    assert connected["hbloop_workers"] == int(workers)

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
    assert after["hbloop_frames_in_total"] >= after["hbloop_heartbeats_total"] + LIVE + SILENT
    assert after["hbloop_bytes_out_total"] > after["hbloop_frames_out_total"] > 0
    assert after["hbloop_loop_iterations_total"] > 0
    assert 0 <= after["hbloop_loop_lag_max_seconds"] < WAIT_TIMEOUT
    per_worker = [n for key, n in after.items() if key.startswith("hbloop_worker_connections{")]
    assert len(per_worker) == int(workers) and sum(per_worker) == LIVE


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
