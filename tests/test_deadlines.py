"""Deadline groups: a member's deadline moves with one ``move_to_end`` and no heap
operation, and every member still expires exactly ``period`` after its last touch.

Everything runs on a ``MockClock`` that jumps to the next deadline whenever the loop
would wait (autojump at once: the only I/O in the unit tests is none, and the server
tests wait for their raw peers' bytes first), so each time compared is exact.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbloop import Disconnect, Peer, Reason, ServerPolicy
from hbloop.core.session import Grant, Role, Session, SessionConfig, State
from hbloop.core.wire import PING_FRAME, Scheme, encode_hello
from hbloop.net.channel import Channel, make_channel
from hbloop.net.clock import MockClock
from hbloop.net.counters import IoCounters
from hbloop.net.loop import DeadlineGroup, EventLoop

from conftest import MOCK_AUTOJUMP, InProcessServer, RawPeer

# Touches come at whole seconds and deadlines fall on half seconds: no touch ever
# coincides with a deadline, whose order at one instant the loop leaves open.
PERIOD = 2.5
PATIENCE = 600.0


class Member:
    """A group member: its touch time, and when it expired."""

    def __init__(self, name: int) -> None:
        self.name = name
        self.touched = 0.0
        self.expired: float | None = None


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    ev = EventLoop(clock=MockClock(autojump_threshold=0))
    yield ev
    ev.close()


def group_of(loop: EventLoop, members: list[Member]) -> DeadlineGroup:
    def expire(member: Member) -> None:
        member.expired = loop.now

    group = loop.deadline_group(PERIOD, lambda member: member.touched, expire)
    for member in members:
        assert group.admits(member.touched)
        group.join(member)
    return group


def touch(loop: EventLoop, group: DeadlineGroup, member: Member) -> None:
    if member in group:
        member.touched = loop.now
        group.move_to_end(member)


def model_expiry(touches: list[float]) -> float:
    """When a member joined at 0 and touched at ``touches`` expires: ``PERIOD`` after
    its last touch before a silence of ``PERIOD``."""
    last = 0.0
    for when in sorted(touches):
        if when >= last + PERIOD:
            break
        last = when
    return last + PERIOD


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    touches=st.lists(st.tuples(st.integers(1, 30), st.integers(0, 5)), max_size=60),
)
def test_every_member_expires_exactly_a_period_after_its_last_touch(
    touches: list[tuple[int, int]],
) -> None:
    loop = EventLoop(clock=MockClock(autojump_threshold=0))
    try:
        members = [Member(i) for i in range(6)]
        group = group_of(loop, members)
        for when, name in touches:
            loop.call_at(float(when), touch, loop, group, members[name])
        assert loop.run_until(lambda: all(m.expired is not None for m in members), PATIENCE)
        for member in members:
            mine = [float(when) for when, name in touches if name == member.name]
            assert member.expired == model_expiry(mine)
    finally:
        loop.close()


def test_a_group_holds_one_timer_however_many_members_it_moves(loop: EventLoop) -> None:
    members = [Member(i) for i in range(1000)]
    group = group_of(loop, members)
    assert loop.timer_count == 1

    def touch_all() -> None:
        for member in members:
            touch(loop, group, member)

    loop.call_at(1.0, touch_all)
    assert loop.run_until(lambda: members[0].touched == 1.0, PATIENCE)
    assert loop.timer_count == 1  # a thousand deadlines moved, the heap untouched
    assert loop.run_until(lambda: members[-1].expired is not None, PATIENCE)
    assert {m.expired for m in members} == {1.0 + PERIOD}
    assert not group and loop.timer_count == 0


def test_a_member_touched_before_the_tail_is_not_admitted(loop: EventLoop) -> None:
    late, early = Member(0), Member(1)
    late.touched = 5.0
    group = group_of(loop, [late])
    early.touched = 4.0
    assert not group.admits(early.touched)  # it would expire behind a later deadline
    assert group.admits(5.0)


def test_a_member_that_leaves_never_expires(loop: EventLoop) -> None:
    gone, kept = Member(0), Member(1)
    group = group_of(loop, [gone, kept])
    group.leave(gone)
    assert loop.run_until(lambda: kept.expired is not None, PATIENCE)
    assert gone.expired is None and kept.expired == PERIOD
    group.join(gone)
    assert loop.timer_count == 1
    group.leave(gone)
    assert loop.timer_count == 0  # the last member took the group's timer with it


# --- the server's peers ---------------------------------------------------------------


def test_a_servers_pinging_peers_share_one_group_and_no_timer(
    in_process_server: Callable[..., InProcessServer],
    raw_peer: Callable[[tuple[str, int]], RawPeer],
) -> None:
    policy = ServerPolicy()
    clock = MockClock(autojump_threshold=MOCK_AUTOJUMP)
    disconnects: list[tuple[float, Disconnect]] = []

    def disconnected(peer: Peer, disconnect: Disconnect) -> None:
        disconnects.append((server.loop.now, disconnect))

    server = in_process_server(policy, clock, on_disconnect=disconnected)
    peers = [raw_peer(server.address) for _ in range(5)]
    for i, peer in enumerate(peers):
        peer.send(encode_hello(f"p{i}", 0))
    server.run_until(lambda: len(server.server.peers) == len(peers), PATIENCE)
    channels = [peer._channel for peer in server.server.peers]
    assert all(ch.timer is None and ch.group is not None for ch in channels)
    assert len({id(ch.group) for ch in channels}) == 1
    # All but the first keep pinging; the first is closed a timeout after its HELLO.
    opened = server.loop.now
    for peer in peers[1:]:
        server.loop.call_at(opened + policy.timeout - 1.0, peer.send, PING_FRAME)
    server.run_until(lambda: bool(disconnects), PATIENCE)
    closed, disconnect = disconnects[0]
    assert disconnect.reason is Reason.TIMEOUT
    assert closed == opened + policy.timeout
    assert len(server.server.peers) == len(peers) - 1


def test_a_channel_silent_since_before_the_groups_tail_keeps_its_own_timer() -> None:
    """An admission that came late (its HELLO older than the group's newest touch)
    cannot join without expiring late: its own timer fires exactly on time, and it
    joins the group once that has found it alive."""
    clock = MockClock(autojump_threshold=0)
    loop = EventLoop(clock=clock)
    grant = Grant(Scheme.CLIENT, 1_000, 3_000)
    expired: list[tuple[int, float]] = []

    class Endpoint:
        def __init__(self) -> None:
            self.loop = loop
            self.counters = IoCounters()
            self.max_pending = 1 << 20

        def channel_events(self, channel: Channel[int], events: object) -> None:
            pass

        def channel_released(self, channel: Channel[int]) -> None:
            expired.append((channel.app, loop.now))

        def tls_handshake(self, done: bool) -> None:
            pass

    endpoint = Endpoint()
    config = SessionConfig(Role.SERVER, handshake_timeout=10.0, ping_strikes=3, linger=0.0)
    sockets: list[socket.socket] = []
    channels = []
    try:
        for app, hello_at in ((0, 1.0), (1, 0.5)):  # the second HELLO is the older
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            sockets += [ours, theirs]
            session = Session.server(config, 0.0)
            session.receive_data(encode_hello(f"p{app}", 0), hello_at)
            channels.append(make_channel(endpoint, app, ours, session))
        for channel in channels:  # both admitted at 2.0
            channel.apply(channel.session.accept(grant, 2.0))
        first, second = channels
        assert first.group is not None and first.timer is None
        assert second.group is None and second.timer is not None
        assert loop.run_until(lambda: len(expired) == 2, PATIENCE)
        assert sorted(expired) == [(0, 1.0 + 3.0), (1, 0.5 + 3.0)]
        assert all(ch.session.state is State.CLOSED for ch in channels)
    finally:
        for sock in sockets:
            sock.close()
        loop.close()
