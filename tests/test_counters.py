"""hbloop.net.counters: the fast path's plain counts, published on scrape."""

from __future__ import annotations

from hbloop.core.session import HEARTBEAT_SIZE, Grant, Role, Session, SessionConfig
from hbloop.core.wire import PING_FRAME, PONG_FRAME, Scheme, encode_hello
from hbloop.net.counters import IoCounters, ServerStats

INTERVAL_MS = 1_000
TIMEOUT_MS = 3_000


def opened(counters: IoCounters) -> Session:
    """A server session past its handshake, counting into ``counters``, whose peer may
    ping and whose PONGs are neither reported nor rated (both take the fast path)."""
    config = SessionConfig(
        Role.SERVER,
        handshake_timeout=10.0,
        ping_strikes=3,
        linger=2.0,
        report_pongs=False,
        peer_rate=0,
        counters=counters,
    )
    session = Session.server(config, 0.0)
    session.receive_data(encode_hello("alice", INTERVAL_MS), 0.0)
    session.accept(Grant(Scheme.CLIENT, INTERVAL_MS, TIMEOUT_MS), 0.0)
    return session


def test_fast_path_heartbeats_are_published_by_a_snapshot() -> None:
    stats = ServerStats()
    session = opened(stats)
    before = stats.copy()
    assert session.receive_heartbeat(PING_FRAME, 1.0) == PONG_FRAME
    assert session.receive_heartbeat(PONG_FRAME, 1.5) == b""
    # The hot path bumped one plain integer per heartbeat, nothing else.
    assert (stats.quick_pings, stats.quick_pongs) == (1, 1)
    assert stats.heartbeats == before.heartbeats
    after = stats.copy()
    assert after.heartbeats - before.heartbeats == 2
    assert after.frames_in - before.frames_in == 2
    assert after.frames_out - before.frames_out == 1  # the PONG answering the PING
    assert after.bytes_in - before.bytes_in == 2 * HEARTBEAT_SIZE
    assert after.bytes_out - before.bytes_out == HEARTBEAT_SIZE
    assert sum(after.heartbeat_intervals.counts) == 2
    # Published once: the live object holds them now, and a second scrape adds nothing.
    assert (stats.quick_pings, stats.quick_pongs) == (0, 0)
    assert stats.copy().to_json() == after.to_json()


def test_to_json_publishes_and_a_worker_snapshot_reads_back_the_same() -> None:
    stats = ServerStats()
    session = opened(stats)
    for beat in range(3):
        assert session.receive_heartbeat(PING_FRAME, 1.0 + beat) == PONG_FRAME
    data = stats.to_json()
    assert data["heartbeats"] == 3 and data["frames_out"] >= 3
    assert ServerStats.from_json(data).to_json() == data


def test_general_and_fast_paths_publish_the_same_figures() -> None:
    fast, general = ServerStats(), ServerStats()
    fast_session, general_session = opened(fast), opened(general)
    for beat in range(4):
        frame = PING_FRAME if beat % 2 == 0 else PONG_FRAME
        fast_session.receive_heartbeat(frame, 1.0 + beat)
        out, _ = general_session.receive_data(frame, 1.0 + beat)
        general.bytes_in += len(frame)  # what the channel counts for a general read
        general.bytes_out += len(out)  # and for what it sends
    assert fast.to_json() == general.to_json()
