"""The per-frame fast paths behave exactly like the general path.

``Session.receive_heartbeat`` stamps and answers a 6-byte PING or PONG without the
decoder and without events; a channel tries it on every read of exactly that size and
hands the bytes to ``receive_data`` when it declines. Driven over the same byte
streams, split at any points and read at any times, a session that takes the fast
path where it can and one that never does must answer the same bytes, report the same
events and end in the same state, counters and histogram included.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbloop.core.session import (
    HEARTBEAT_SIZE,
    Grant,
    Role,
    Session,
    SessionConfig,
    Step,
    _Tally,
    fold_quick,
)
from hbloop.core.wire import PING_FRAME, PONG_FRAME, Scheme, encode_data, encode_hello

# protocol.md's defaults scaled to the millisecond clock of these tests.
INTERVAL_MS = 1_000
TIMEOUT_MS = 3_000
STRIKES = 3

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What a peer sends: mostly heartbeats, with DATA, a CLOSE-free stream's other frames
# and the odd bad byte among them.
frames = st.lists(
    st.one_of(
        st.just(PING_FRAME),
        st.just(PONG_FRAME),
        st.binary(max_size=8).map(encode_data),
        st.binary(min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=24,
)

# How the shell sees the stream: reads cut anywhere (often exactly at frame bounds, so
# that reads of one heartbeat are common), each some milliseconds after the last.
configs = st.fixed_dictionaries(
    {
        "report_pongs": st.booleans(),
        "peer_rate": st.sampled_from([0, 0, 2]),
        "scheme": st.sampled_from(list(Scheme)),
    }
)


def opened_server(report_pongs: bool, peer_rate: int, scheme: Scheme) -> Session:
    config = SessionConfig(
        Role.SERVER,
        handshake_timeout=10.0,
        ping_strikes=STRIKES,
        linger=2.0,
        report_pongs=report_pongs,
        peer_rate=peer_rate,
        counters=_Tally(),
    )
    session = Session.server(config, 0.0)
    session.receive_data(encode_hello("alice", INTERVAL_MS), 0.0)
    session.accept(Grant(scheme, INTERVAL_MS, TIMEOUT_MS), 0.0)
    return session


def snapshot(session: Session) -> dict[str, Any]:
    """Everything a read can change: the session's slots, its counters, its histogram."""
    state = {name: getattr(session, name) for name in Session.__slots__ if name != "config"}
    state["grant"] = repr(state["grant"])  # each session has its own Grant
    held = state.pop("_held")
    state["held"] = None if held is None else bytes(held)
    counters = session.config.counters
    fold_quick(counters)  # as the owner does on a scrape
    state["counters"] = (counters.frames_in, counters.heartbeats, counters.frames_out)
    state["histogram"] = (
        list(counters.heartbeat_intervals.counts),
        counters.heartbeat_intervals.sum,
    )
    return state


def general(session: Session, data: bytes, now: float) -> Step:
    return session.receive_data(data, now)


def fast(session: Session, data: bytes, now: float) -> Step:
    """What ``Channel.on_readable`` does with a read: the fast path, else the general."""
    if len(data) == HEARTBEAT_SIZE:
        # The channel's buffer is longer than the read: the session looks at its start.
        answer = session.receive_heartbeat(bytearray(data) + b"\xff" * 10, now)
        if answer is not None:
            return answer, ()
    return session.receive_data(data, now)


def drive(session: Session, reads: list[tuple[bytes, float]], read: Any) -> list[Any]:
    """Feed ``reads`` as a shell would, with its next turns while the session is paused;
    what came out of each read, and the state after it."""
    record = []
    for data, now in reads:
        out, events = read(session, data, now)
        while session.paused:
            more, extra = session.receive_data(b"", now)
            out += more
            events = [*events, *extra]
        record.append((bytes(out), list(events), snapshot(session)))
    return record


@SETTINGS
@given(
    config=configs,
    stream=frames,
    cuts=st.lists(st.integers(0, 200), max_size=24),
    gaps=st.lists(st.integers(0, 1_500), min_size=60, max_size=60),
    bounds=st.booleans(),
)
def test_the_heartbeat_fast_path_is_the_general_path(
    config: dict[str, Any], stream: list[bytes], cuts: list[int], gaps: list[int], bounds: bool
) -> None:
    data = b"".join(stream)
    if bounds:  # reads at frame boundaries: every lone heartbeat is one read
        points = list(itertools.accumulate(len(frame) for frame in stream))
    else:
        points = sorted({min(cut, len(data)) for cut in cuts})
    pieces = [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)]) if b > a]
    times = itertools.accumulate(gap / 1000 for gap in gaps)
    reads = list(zip(pieces, times, strict=False))
    expected = drive(opened_server(**config), reads, general)
    assert drive(opened_server(**config), reads, fast) == expected


def test_a_lone_ping_takes_the_fast_path_and_a_strike_does_not() -> None:
    session = opened_server(report_pongs=False, peer_rate=0, scheme=Scheme.CLIENT)
    assert session.receive_heartbeat(PING_FRAME, 1.0) == PONG_FRAME
    assert session.receive_heartbeat(PING_FRAME, 1.2) == PONG_FRAME
    assert session.last_recv == session.last_sent == 1.2
    # Sooner than half an interval after the one credited at 1.0 (T8): a strike, which
    # only the general path counts.
    assert session.receive_heartbeat(PING_FRAME, 1.3) is None
    assert session.last_recv == 1.2 and session.strikes == 0
    assert session.receive_data(PING_FRAME, 1.3)[0] == PONG_FRAME
    assert session.strikes == 1


def test_pongs_take_the_fast_path_only_when_neither_reported_nor_rated() -> None:
    plain = opened_server(report_pongs=False, peer_rate=0, scheme=Scheme.SERVER)
    assert plain.receive_heartbeat(PONG_FRAME, 1.0) == b""
    assert plain.config.counters.quick_pongs == 1
    for report_pongs, peer_rate in ((True, 0), (False, 2)):
        session = opened_server(
            report_pongs=report_pongs, peer_rate=peer_rate, scheme=Scheme.SERVER
        )
        assert session.receive_heartbeat(PONG_FRAME, 1.0) is None
        assert session.config.counters.quick_pongs == 0


def test_a_held_partial_frame_sends_a_heartbeat_down_the_general_path() -> None:
    session = opened_server(report_pongs=False, peer_rate=0, scheme=Scheme.CLIENT)
    session.receive_data(PING_FRAME[:2], 1.0)
    rest = PING_FRAME[2:] + PING_FRAME[:2]
    assert session.receive_heartbeat(rest, 1.5) is None
    assert session.receive_data(rest, 1.5)[0] == PONG_FRAME
    assert session.buffered == 2
