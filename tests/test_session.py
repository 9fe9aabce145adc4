"""protocol.md, statement by statement, on a pair of sessions and an explicit clock.

No sockets and no real time: a ``Link`` joins a server session and a client session,
hands the bytes one side sends to the other (each session decodes its own input) at
the same instant, and moves the clock from deadline to deadline. Each test names the numbered
statement (F, H, T, C, R) it checks; times are in milliseconds, as in protocol.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from hbloop.client import is_final
from hbloop.core.backoff import Backoff
from hbloop.core.protocol import FrameDecoder, LocalProtocolError
from hbloop.core.session import (
    MAX_FRAMES_PER_READ,
    NEVER,
    AuthReceived,
    Closed,
    Disconnect,
    Event,
    Grant,
    HelloReceived,
    Message,
    Opened,
    Reason,
    Reauthenticated,
    Role,
    Session,
    SessionConfig,
    State,
    Step,
)
from hbloop.core.wire import (
    AUTH_ACK_FRAME,
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAX_HELLO_PAYLOAD,
    MUST_UNDERSTAND,
    PING_FRAME,
    PONG_FRAME,
    VERSION_1,
    VERSION_2,
    Code,
    FrameType,
    Hello,
    Prop,
    Scheme,
    Welcome,
    encode_auth,
    encode_close,
    encode_data,
    encode_error,
    encode_frame,
    encode_hello,
    encode_property,
    encode_welcome,
)

HANDSHAKE_MS = 10_000
# The linear-buffer test: pieces of this size, and the CPU time (process_time, which
# other load on the machine does not inflate) that 16 MiB of them may take. Linear
# buffering takes about 0.05 s here; main's decoder, which copied what it held for
# every piece, passed the bound after 7.5 MiB.
LINEAR_PIECE = 1024
LINEAR_CPU_BOUND = 1.0
LINGER_MS = 2_000
STRIKES = 3
INTERVAL_MS = 1_000
TIMEOUT_MS = 3_000

Sent = list[tuple[int, bytes]]


def seconds(ms: float) -> float:
    return ms / 1000


def frames_of(data: bytes) -> Sent:
    return FrameDecoder(DEFAULT_MAX_PAYLOAD).feed(data)


def config(role: Role, **kwargs: object) -> SessionConfig:
    settings: dict[str, object] = {
        "handshake_timeout": seconds(HANDSHAKE_MS),
        "ping_strikes": STRIKES,
        "linger": seconds(LINGER_MS),
    }
    if role is Role.CLIENT:
        settings["hello"] = encode_hello("alice", INTERVAL_MS)
    settings.update(kwargs)
    return SessionConfig(role, **settings)  # type: ignore[arg-type]


class Side:
    """One end of a Link: its session, what it sent, the events it reported."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.sent: Sent = []
        self.events: list[Event] = []
        self.muted = False  # a muted side's output is lost on the way (a dead peer)
        self.held = False  # a held side's output waits on the way (the other stalls)
        self.waiting = b""

    def sent_types(self) -> list[FrameType]:
        return [FrameType(ftype) for ftype, _ in self.sent]

    def closed(self) -> Disconnect | None:
        ends = [e.disconnect for e in self.events if isinstance(e, Closed)]
        assert len(ends) <= 1, "Closed is reported exactly once"
        return ends[0] if ends else None


class Link:
    """A server and a client session joined by an in-memory, zero-latency wire."""

    def __init__(
        self,
        scheme: Scheme = Scheme.CLIENT,
        admit: Callable[[Session, Hello], Step] | None = None,
        client_config: SessionConfig | None = None,
        server_config: SessionConfig | None = None,
    ) -> None:
        self.ms = 0  # the clock, in whole milliseconds, so that now is exact
        self.now = 0.0
        self.scheme = scheme
        self.server = Side(Session.server(server_config or config(Role.SERVER), self.now))
        self.client = Side(Session.client(client_config or config(Role.CLIENT), self.now))
        self.admit = admit or self.accept

    def accept(self, session: Session, hello: Hello) -> Step:
        granted = INTERVAL_MS if hello.interval_ms == 0 else hello.interval_ms
        grant = Grant(self.scheme, granted, granted * TIMEOUT_MS // INTERVAL_MS)
        return session.accept(grant, self.now)

    def other(self, side: Side) -> Side:
        return self.client if side is self.server else self.server

    def apply(self, side: Side, step: Step) -> None:
        out, events = step
        side.events.extend(events)
        for event in events:
            if isinstance(event, HelloReceived):
                self.apply(side, self.admit(side.session, event.hello))
        if out:
            self.transmit(side, out)

    def transmit(self, side: Side, data: bytes) -> None:
        side.sent.extend(frames_of(data))
        if side.muted:
            return
        if side.held:
            side.waiting += data
            return
        self.deliver(side, data)

    def release(self, side: Side) -> None:
        """Deliver what ``side`` sent while held, in one read, now."""
        side.held = False
        data, side.waiting = side.waiting, b""
        self.deliver(side, data)

    def deliver(self, side: Side, data: bytes) -> None:
        receiver = self.other(side)
        session = receiver.session
        self.apply(receiver, session.receive_data(data, self.now))
        while session.paused:  # past one read's share: the next, as a shell's next turn
            self.apply(receiver, session.receive_data(b"", self.now))

    def connect(self) -> Link:
        self.transmit(self.client, self.client.session.connected(self.now))
        return self

    def send(self, side: Side, data: bytes) -> None:
        """Raw bytes from ``side``, bypassing its session (a misbehaving peer)."""
        self.transmit(side, data)

    def advance(self, ms: int) -> None:
        """Move the clock ``ms`` on, firing each deadline at its exact time (but not
        the deadlines of a side whose peer's output is held: that side is stopped)."""
        self.ms += ms
        end = seconds(self.ms)
        running = [side for side in (self.server, self.client) if not self.other(side).held]
        while running:
            side = min(running, key=lambda s: s.session.next_deadline())
            due = side.session.next_deadline()
            if due > end:
                break
            self.now = max(self.now, due)
            self.apply(side, side.session.deadline_reached(self.now))
        self.now = end


@pytest.fixture
def link() -> Link:
    return Link().connect()


def raw() -> Link:
    """A link whose client speaks raw bytes: the server's answers are only recorded."""
    link = Link()
    link.server.muted = True
    return link


def opened(side: Side) -> bool:
    return any(isinstance(e, Opened) for e in side.events)


# --- section 1: frames ------------------------------------------------------------------


def test_F1_a_bad_first_header_gets_its_own_code_not_hello_required() -> None:
    server = Session.server(config(Role.SERVER), 0.0)
    out, events = server.receive_data(encode_frame(FrameType.PING)[:4] + bytes([0x42, 0]), 0.0)
    assert frames_of(out) == [(FrameType.ERROR, b"\x02\x02" + b"frame type 0x42")]
    assert isinstance(events[0], Closed) and events[0].disconnect.code == Code.UNKNOWN_TYPE


def test_F1_a_header_is_refused_before_its_payload_arrives() -> None:
    link = Link(server_config=config(Role.SERVER, max_payload=1024)).connect()
    link.send(link.client, encode_data(bytes(1025))[:HEADER_SIZE])
    disconnect = link.server.closed()
    assert disconnect is not None and disconnect.code == Code.FRAME_TOO_LARGE
    assert link.server.session.buffered == 0


def test_F2_before_the_handshake_a_server_buffers_no_more_than_the_largest_hello() -> None:
    # version, interval, name length, 255 name bytes, token length, the longest token
    assert MAX_HELLO_PAYLOAD == 6 + 255 + 2 + 4096
    # A name over 64 bytes is still a HELLO, refused with BAD_NAME, not by its size...
    server = Session.server(config(Role.SERVER), 0.0)
    _, events = server.receive_data(encode_hello("n" * 65, 0), 0.0)
    assert isinstance(events[0], Closed) and events[0].disconnect.code == Code.BAD_NAME
    # ...while a first frame one byte longer than the longest HELLO is refused at once.
    server = Session.server(config(Role.SERVER), 0.0)
    header = encode_data(bytes(MAX_HELLO_PAYLOAD + 1))[:HEADER_SIZE]
    _, events = server.receive_data(header, 0.0)
    assert isinstance(events[0], Closed) and events[0].disconnect.code == Code.FRAME_TOO_LARGE


@pytest.mark.parametrize("split", [False, True])
def test_H2a_a_frame_behind_the_hello_gets_the_open_maximum(split: bool) -> None:
    """A DATA larger than the pre-handshake limit, pipelined behind the HELLO (whole in
    the HELLO's read, or only its header), is judged once the HELLO is admitted, under
    the OPEN maximum: WELCOME, then the DATA, no FRAME_TOO_LARGE."""
    data = bytes(MAX_HELLO_PAYLOAD * 2)
    big = encode_data(data)
    server = Session.server(config(Role.SERVER, max_payload=MAX_HELLO_PAYLOAD * 4), 0.0)
    first = encode_hello("alice", INTERVAL_MS) + (big[:HEADER_SIZE] if split else big)
    out, events = server.receive_data(first, 0.0)
    assert out == b"" and isinstance(events[0], HelloReceived)
    out, events = server.accept(Grant(Scheme.CLIENT, INTERVAL_MS, TIMEOUT_MS), 0.0)
    if split:
        assert Message(data) not in events
        more, events = server.receive_data(big[HEADER_SIZE:], 0.0)
        out += more
    assert [FrameType(t) for t, _ in frames_of(out)] == [FrameType.WELCOME]
    assert Message(data) in events
    assert server.state is State.OPEN


def test_F2_the_maximum_once_open_is_the_configured_one() -> None:
    large = config(Role.SERVER, max_payload=MAX_HELLO_PAYLOAD * 4)
    link = Link(server_config=large).connect()
    link.send(link.client, encode_data(bytes(MAX_HELLO_PAYLOAD * 4)))
    assert Message(bytes(MAX_HELLO_PAYLOAD * 4)) in link.server.events
    link.send(link.client, encode_data(bytes(MAX_HELLO_PAYLOAD * 4 + 1)))
    disconnect = link.server.closed()
    assert disconnect is not None and disconnect.code == Code.FRAME_TOO_LARGE


def test_F2_after_the_handshake_the_server_accepts_1024_bytes_of_data(link: Link) -> None:
    link.send(link.client, encode_data(bytes(1024)))
    assert Message(bytes(1024)) in link.server.events


def test_F5_an_error_message_over_200_bytes_is_accepted_and_bad_utf8_replaced(
    link: Link,
) -> None:
    message = "x" * 300
    payload = b"\x01\x03" + message.encode() + b"\xff"
    link.send(link.server, encode_frame(FrameType.ERROR, payload))
    expected = Disconnect(Reason.PEER_ERROR, Code.SERVER_FULL, message + "\ufffd")
    assert link.client.closed() == expected


# --- section 2: the handshake -----------------------------------------------------------


def test_states_follow_the_handshake() -> None:
    link = Link()
    assert link.server.session.state is State.AWAIT_HELLO
    assert link.client.session.state is State.CONNECTING
    link.connect()
    assert link.client.sent_types() == [FrameType.HELLO]
    assert link.server.sent_types() == [FrameType.WELCOME]
    assert link.server.session.state is State.OPEN
    assert link.client.session.state is State.OPEN
    assert opened(link.server) and opened(link.client)


def test_H1_any_other_first_frame_gets_hello_required() -> None:
    link = raw()
    link.send(link.client, PING_FRAME)
    assert link.server.sent == [(FrameType.ERROR, link.server.sent[0][1])]
    assert link.server.closed() == Disconnect(
        Reason.PROTOCOL_ERROR, Code.HELLO_REQUIRED, "PING before HELLO"
    )
    assert link.server.session.state is State.CLOSING


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        (encode_hello("alice", 0, version=3), Code.UNSUPPORTED_VERSION),
        (encode_frame(FrameType.HELLO, b"\x01\x00\x00"), Code.MALFORMED),
        (encode_hello("bad\nname", 0), Code.BAD_NAME),
    ],
)
def test_H2_a_bad_hello_is_refused_with_its_code(hello: bytes, code: Code) -> None:
    link = raw()
    link.send(link.client, hello)
    disconnect = link.server.closed()
    assert disconnect is not None and disconnect.code == code
    assert link.server.sent_types() == [FrameType.ERROR]


def test_H2_admission_refuses_after_the_checks_of_the_hello() -> None:
    refusals: list[str] = []

    def full(session: Session, hello: Hello) -> Step:
        refusals.append(hello.name)
        return session.refuse(Code.SERVER_FULL, "2 connections", 0.0)

    link = Link(admit=full).connect()
    assert refusals == ["alice"]
    assert link.server.closed() == Disconnect(Reason.REFUSED, Code.SERVER_FULL, "2 connections")
    assert link.client.closed() == Disconnect(Reason.PEER_ERROR, Code.SERVER_FULL, "2 connections")
    assert link.client.session.state is State.CLOSED


def test_H3_welcome_carries_the_grant_and_opens_the_client() -> None:
    link = Link(scheme=Scheme.SERVER).connect()
    ((ftype, payload),) = link.server.sent
    assert ftype == FrameType.WELCOME
    assert payload == encode_welcome(Welcome(1, Scheme.SERVER, 1000, 3000))[HEADER_SIZE:]
    grant = link.client.session.grant
    assert (grant.scheme, grant.interval_ms, grant.timeout_ms) == (Scheme.SERVER, 1000, 3000)


@pytest.mark.parametrize(
    ("welcome", "code"),
    [
        (encode_frame(FrameType.WELCOME, bytes(9)), Code.MALFORMED),
        (encode_welcome(Welcome(2, Scheme.CLIENT, 1000, 3000)), Code.UNSUPPORTED_VERSION),
        (encode_frame(FrameType.WELCOME, b"\x01\x02" + bytes(8)), Code.MALFORMED),
        (encode_welcome(Welcome(1, Scheme.CLIENT, 0, 3000)), Code.MALFORMED),
        (encode_welcome(Welcome(1, Scheme.CLIENT, 1000, 1999)), Code.MALFORMED),  # T < 2I
    ],
)
def test_H3_the_client_checks_the_welcome(welcome: bytes, code: Code) -> None:
    client = Session.client(config(Role.CLIENT), 0.0)
    client.connected(0.0)
    out, events = client.receive_data(welcome, 0.0)
    assert [FrameType(t) for t, _ in frames_of(out)] == [FrameType.ERROR]
    assert isinstance(events[0], Closed) and events[0].disconnect.code == code
    assert client.state is State.CLOSING


def test_H3_a_welcome_at_exactly_twice_the_interval_is_accepted() -> None:
    client = Session.client(config(Role.CLIENT), 0.0)
    client.connected(0.0)
    _, events = client.receive_data(encode_welcome(Welcome(1, Scheme.CLIENT, 5, 10)), 0.0)
    assert isinstance(events[0], Opened)


def test_H4_a_second_hello_is_a_duplicate(link: Link) -> None:
    link.send(link.client, encode_hello("alice", 0))
    disconnect = link.server.closed()
    assert disconnect is not None and disconnect.code == Code.DUPLICATE_HELLO


def test_H5_the_handshake_deadline_closes_a_silent_connection_on_time() -> None:
    link = raw()
    link.send(link.client, encode_hello("alice", 0)[:5])  # partial frames do not count
    link.advance(HANDSHAKE_MS - 1)
    assert link.server.session.state is State.AWAIT_HELLO
    link.advance(1)
    assert link.server.sent_types() == [FrameType.CLOSE]
    assert link.server.sent[0][1] == encode_close(Code.HANDSHAKE_TIMEOUT)[HEADER_SIZE:]
    assert link.server.closed() == Disconnect(Reason.HANDSHAKE_TIMEOUT, Code.HANDSHAKE_TIMEOUT)


def test_H6_a_server_may_not_send_hello_nor_a_client_welcome(link: Link) -> None:
    link.send(link.server, encode_hello("mallory", 0))
    disconnect = link.client.closed()
    assert disconnect is not None and disconnect.code == Code.UNEXPECTED_FRAME
    other = Link().connect()
    other.send(other.client, encode_welcome(Welcome(1, Scheme.CLIENT, 1000, 3000)))
    disconnect = other.server.closed()
    assert disconnect is not None and disconnect.code == Code.UNEXPECTED_FRAME


@pytest.mark.parametrize(
    "first", [PING_FRAME, PONG_FRAME, encode_data(b"early"), encode_hello("x", 0)]
)
def test_H6_before_welcome_a_client_accepts_only_welcome_error_or_close(first: bytes) -> None:
    client = Session.client(config(Role.CLIENT), 0.0)
    client.connected(0.0)
    out, events = client.receive_data(first, 0.0)
    assert [FrameType(t) for t, _ in frames_of(out)] == [FrameType.ERROR]
    assert isinstance(events[0], Closed) and events[0].disconnect.code == Code.UNEXPECTED_FRAME


def test_H6_a_second_welcome_is_unexpected(link: Link) -> None:
    link.send(link.server, encode_welcome(Welcome(1, Scheme.CLIENT, 1000, 3000)))
    disconnect = link.client.closed()
    assert disconnect is not None and disconnect.code == Code.UNEXPECTED_FRAME


def test_H7_frames_behind_the_hello_are_acted_on_after_the_welcome() -> None:
    link = Link()
    link.client.session.connected(0.0)
    link.send(link.client, encode_hello("alice", 0) + PING_FRAME + encode_data(b"early"))
    assert link.server.sent_types() == [FrameType.WELCOME, FrameType.PONG]
    assert Message(b"early") in link.server.events


def test_H7_a_refused_hello_discards_what_was_behind_it() -> None:
    link = Link(admit=lambda s, h: s.refuse(Code.SERVER_FULL, "full", 0.0))
    link.server.muted = True
    link.send(link.client, encode_hello("alice", 0) + PING_FRAME + encode_data(b"lost"))
    assert link.server.sent_types() == [FrameType.ERROR]
    assert not any(isinstance(e, Message) for e in link.server.events)


def test_H7_bytes_before_the_decision_wait_for_it() -> None:
    server = Session.server(config(Role.SERVER), 0.0)
    _, events = server.receive_data(encode_hello("alice", 0), 0.0)
    assert isinstance(events[0], HelloReceived)
    assert server.receive_data(PING_FRAME, 0.0) == (b"", ())
    assert server.buffered == HEADER_SIZE
    out, _ = server.accept(Grant(Scheme.CLIENT, INTERVAL_MS, TIMEOUT_MS), 0.0)
    assert [FrameType(t) for t, _ in frames_of(out)] == [FrameType.WELCOME, FrameType.PONG]


@pytest.mark.parametrize(
    ("disconnect", "final"),
    [
        (Disconnect(Reason.PEER_ERROR, Code.UNSUPPORTED_VERSION), True),
        (Disconnect(Reason.PEER_ERROR, Code.BAD_NAME), True),
        (Disconnect(Reason.PEER_ERROR, Code.UNAUTHORIZED), True),
        (Disconnect(Reason.PEER_CLOSED, Code.TAKEN_OVER), True),
        (Disconnect(Reason.PEER_ERROR, Code.SERVER_FULL), False),
        (Disconnect(Reason.PEER_ERROR, Code.NAME_TAKEN), False),
        (Disconnect(Reason.PEER_CLOSED, Code.GOING_AWAY), False),
        (Disconnect(Reason.TIMEOUT, Code.TIMEOUT), False),
    ],
)
def test_H8_which_ends_stop_the_client(disconnect: Disconnect, final: bool) -> None:
    assert is_final(disconnect) is final


def test_H9_the_client_abandons_an_attempt_without_welcome_in_time() -> None:
    client = Session.client(config(Role.CLIENT), 0.0)
    assert client.next_deadline() == seconds(HANDSHAKE_MS)  # counted from the connect
    client.connected(seconds(4_000))
    assert client.deadline_reached(seconds(HANDSHAKE_MS - 1)) == (b"", ())
    out, events = client.deadline_reached(seconds(HANDSHAKE_MS))
    assert out == b""  # no frame
    assert isinstance(events[0], Closed)
    assert events[0].disconnect.reason is Reason.HANDSHAKE_TIMEOUT
    assert client.state is State.CLOSED


def v2_client(max_payload: int | None = None, token: str | None = None) -> SessionConfig:
    hello = encode_hello("alice", INTERVAL_MS, VERSION_2, token=token, max_payload=max_payload)
    return config(Role.CLIENT, hello=hello)


def test_H10_a_version_2_handshake_exchanges_the_maximum_payloads() -> None:
    server = config(Role.SERVER, max_payload=8192)
    link = Link(client_config=v2_client(max_payload=4096), server_config=server).connect()
    ((ftype, payload),) = link.server.sent
    assert ftype == FrameType.WELCOME
    welcome = Welcome(2, Scheme.CLIENT, 1000, 3000, 8192, reauth=True)  # A1: AUTH is taken
    assert payload == encode_welcome(welcome)[HEADER_SIZE:]
    assert link.server.session.peer_max_payload == 4096
    assert link.client.session.peer_max_payload == 8192
    assert isinstance(link.client.events[0], Opened)


def test_H10_a_version_1_handshake_tells_no_maximum(link: Link) -> None:
    assert link.server.session.peer_max_payload is None
    assert link.client.session.peer_max_payload is None
    assert len(link.client.session.send_data(bytes(DEFAULT_MAX_PAYLOAD + 1), link.now)) > 0


def test_H10_R6_data_larger_than_the_peers_maximum_is_refused_locally() -> None:
    server = config(Role.SERVER, max_payload=2048)
    link = Link(client_config=v2_client(), server_config=server).connect()
    link.client.session.send_data(bytes(2048), link.now)
    with pytest.raises(LocalProtocolError) as raised:
        link.client.session.send_data(bytes(2049), link.now)
    assert raised.value.code is Code.FRAME_TOO_LARGE


@pytest.mark.parametrize(
    ("welcome", "code"),
    [
        (encode_welcome(Welcome(1, Scheme.CLIENT, 1000, 3000)), Code.UNSUPPORTED_VERSION),
        (encode_welcome(Welcome(3, Scheme.CLIENT, 1000, 3000)), Code.UNSUPPORTED_VERSION),
        (
            encode_frame(
                FrameType.WELCOME,
                encode_welcome(Welcome(2, Scheme.CLIENT, 1000, 3000))[HEADER_SIZE:]
                + encode_property(MUST_UNDERSTAND | 0x0042, b""),
            ),
            Code.UNSUPPORTED_PROPERTY,
        ),
    ],
)
def test_H10_a_version_2_client_checks_the_welcome(welcome: bytes, code: Code) -> None:
    client = Session.client(v2_client(), 0.0)
    client.connected(0.0)
    out, events = client.receive_data(welcome, 0.0)
    assert [FrameType(t) for t, _ in frames_of(out)] == [FrameType.ERROR]
    assert isinstance(events[0], Closed) and events[0].disconnect.code == code


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (encode_property(0x7001, b"later"), None),  # unknown: skipped
        (encode_property(MUST_UNDERSTAND | 0x7001, b""), Code.UNSUPPORTED_PROPERTY),
        (encode_property(0x7001, b"") * 2, Code.MALFORMED),  # repeated
        (encode_property(0x7001, b"later")[:-1], Code.MALFORMED),  # cut short
    ],
)
def test_F6_the_server_reads_the_hellos_properties(extra: bytes, code: Code | None) -> None:
    link = raw()
    hello = encode_hello("alice", INTERVAL_MS, VERSION_2)
    link.send(link.client, encode_frame(FrameType.HELLO, hello[HEADER_SIZE:] + extra))
    if code is None:
        assert link.server.sent_types() == [FrameType.WELCOME]
        assert link.server.closed() is None
    else:
        assert link.server.sent_types() == [FrameType.ERROR]
        disconnect = link.server.closed()
        assert disconnect is not None and disconnect.code == code


def test_H10_a_refused_version_2_hello_falls_back_to_version_1_once() -> None:
    client = v2_client(max_payload=4096, token="k")
    refused = Disconnect(Reason.PEER_ERROR, Code.UNSUPPORTED_VERSION, "speaks 1")
    assert not client.fall_back(Disconnect(Reason.PEER_ERROR, Code.BAD_NAME))
    assert not client.fall_back(Disconnect(Reason.PEER_CLOSED, Code.UNSUPPORTED_VERSION))
    assert client.version == VERSION_2
    assert client.fall_back(refused)
    # The same name, interval and token, in version 1's layout.
    assert client.hello == encode_hello("alice", INTERVAL_MS, VERSION_1, token="k")
    assert not client.fall_back(refused)  # once: a version 1 refusal is final (H8)


# --- section 3: timing ------------------------------------------------------------------


def test_T1_the_welcome_carries_what_the_server_granted() -> None:
    def grant_500(session: Session, hello: Hello) -> Step:
        return session.accept(Grant(Scheme.CLIENT, 500, 1500), 0.0)

    link = Link(admit=grant_500).connect()
    grant = link.client.session.grant
    assert (grant.interval_ms, grant.timeout_ms) == (500, 1500)
    assert (grant.interval, grant.timeout) == (0.5, 1.5)


def test_T3_client_scheme_the_first_ping_is_an_interval_after_hello(link: Link) -> None:
    link.advance(INTERVAL_MS - 1)
    assert FrameType.PING not in link.client.sent_types()
    link.advance(1)
    assert link.client.sent_types() == [FrameType.HELLO, FrameType.PING]
    assert link.server.sent_types() == [FrameType.WELCOME, FrameType.PONG]


def test_T3_server_scheme_the_server_pings_and_the_client_answers() -> None:
    link = Link(scheme=Scheme.SERVER).connect()
    link.advance(INTERVAL_MS)
    assert link.server.sent_types() == [FrameType.WELCOME, FrameType.PING]
    assert link.client.sent_types() == [FrameType.HELLO, FrameType.PONG]
    link.advance(10 * INTERVAL_MS)
    assert link.client.closed() is None and link.server.closed() is None


def test_T3_traffic_both_ways_postpones_the_ping(link: Link) -> None:
    for _ in range(5):
        link.advance(INTERVAL_MS // 2)
        link.transmit(link.client, link.client.session.send_data(b"up", link.now))
        link.transmit(link.server, link.server.session.send_data(b"down", link.now))
    assert FrameType.PING not in link.client.sent_types()


def test_T3_a_side_that_only_receives_still_pings(link: Link) -> None:
    for _ in range(4):
        link.advance(INTERVAL_MS // 4)
        link.transmit(link.server, link.server.session.send_data(b"down", link.now))
    # The client sent nothing since HELLO at 0: its PING is due at I, data or not.
    assert link.client.sent_types() == [FrameType.HELLO, FrameType.PING]


def test_T3_next_ping_is_the_rule() -> None:
    session = Link().connect().client.session
    session.last_sent, session.last_recv, session.last_ping_out = 10.0, 10.0, 0.0
    assert session.next_ping() == 11.0
    session.last_sent = 3.0  # only receiving since 3: PING at 3 + I
    assert session.next_ping() == 4.0
    session.last_recv, session.last_ping_out = 3.0, 3.5  # never sooner than I after a PING
    assert session.next_ping() == 4.5
    session.last_ping_out = NEVER
    assert session.next_ping() == 4.0


@pytest.mark.parametrize("scheme", list(Scheme))
def test_T4_a_ping_is_answered_in_either_scheme(scheme: Scheme) -> None:
    link = Link(scheme=scheme).connect()
    link.advance(INTERVAL_MS // 2)
    link.transmit(link.client, link.client.session.ping(link.now))
    assert link.server.sent_types()[-1] is FrameType.PONG


def test_T5_data_alone_keeps_both_sides_alive() -> None:
    link = Link(client_config=config(Role.CLIENT, auto_ping=False)).connect()
    for _ in range(10):
        link.advance(INTERVAL_MS)
        link.transmit(link.client, link.client.session.send_data(b"reading", link.now))
        link.transmit(link.server, link.server.session.send_data(b"echo", link.now))
    assert link.server.closed() is None and link.client.closed() is None
    assert FrameType.PING not in link.client.sent_types() + link.server.sent_types()


def test_T5_a_partial_frame_proves_nothing() -> None:
    link = Link(client_config=config(Role.CLIENT, auto_ping=False)).connect()
    link.advance(TIMEOUT_MS - 10)
    link.send(link.client, PING_FRAME[:3])  # the rest never comes
    link.advance(10)
    disconnect = link.server.closed()
    assert disconnect is not None and disconnect.reason is Reason.TIMEOUT


def test_T6_a_silent_client_is_closed_at_exactly_the_timeout_after_hello() -> None:
    link = Link()
    link.advance(750)
    link.connect()  # HELLO arrives at 750 ms: the server's clock starts there
    link.client.muted = True
    link.advance(TIMEOUT_MS - 1)
    assert link.server.session.state is State.OPEN
    assert link.server.session.expired(link.now) is False
    link.advance(1)
    assert link.server.session.state is State.CLOSING
    assert link.server.sent_types()[-1] is FrameType.CLOSE
    disconnect = link.server.closed()
    assert disconnect is not None
    assert (disconnect.reason, disconnect.code) == (Reason.TIMEOUT, Code.TIMEOUT)


def test_T6_the_client_judges_the_server_from_welcome() -> None:
    link = Link(scheme=Scheme.SERVER).connect()
    link.server.muted = True
    link.advance(TIMEOUT_MS - 1)
    assert link.client.session.state is State.OPEN
    link.advance(1)
    assert link.client.sent_types()[-1] is FrameType.CLOSE
    disconnect = link.client.closed()
    assert disconnect is not None and disconnect.reason is Reason.TIMEOUT


def test_T6_expired_is_the_cue_to_read_first(link: Link) -> None:
    session = link.server.session
    late = seconds(TIMEOUT_MS + 5_000)  # the server itself was stopped
    assert session.expired(late)
    # What was waiting in the socket is read before judging: the peer is alive.
    session.receive_data(PING_FRAME, late)
    assert not session.expired(late)
    assert session.deadline_reached(late) == (b"", ())
    assert session.state is State.OPEN


def test_T7_and_T8_pings_faster_than_half_the_interval_are_strikes(link: Link) -> None:
    link.advance(100)
    for _ in range(STRIKES):
        link.transmit(link.client, link.client.session.ping(link.now))
        link.advance(INTERVAL_MS // 10)
    # The first PING is never a strike; the next STRIKES - 1 were; one more ends it.
    assert link.server.closed() is None
    link.transmit(link.client, link.client.session.ping(link.now))
    disconnect = link.server.closed()
    assert disconnect is not None and disconnect.code == Code.TOO_MANY_PINGS
    assert link.server.sent_types().count(FrameType.PONG) == STRIKES  # all earlier answered


def test_T8_pings_that_waited_while_the_receiver_was_not_reading_are_no_flood(
    link: Link,
) -> None:
    """Well-spaced PINGs that pile up in the socket while the server stalls arrive
    together; each is credited I/2 of the time since the server's previous read."""
    link.client.held = True  # the server reads nothing (it is stopped) for 2.9 s
    for _ in range(STRIKES + 1):
        link.advance(INTERVAL_MS * 6 // 10)  # a PING every 0.6 I: never too soon
        link.transmit(link.client, link.client.session.ping(link.now))
    link.advance(500)
    link.release(link.client)  # all four read at once when the server resumes
    assert link.server.sent_types().count(FrameType.PONG) == STRIKES + 1
    assert link.server.closed() is None
    # A burst right after that is a flood again: the credit was spent.
    link.advance(10)
    link.send(link.client, PING_FRAME * (STRIKES + 1))
    disconnect = link.server.closed()
    assert disconnect is not None and disconnect.code == Code.TOO_MANY_PINGS


def test_T8_a_well_spaced_ping_resets_the_strikes(link: Link) -> None:
    for _ in range(4 * STRIKES):
        link.transmit(link.client, link.client.session.ping(link.now))
        link.advance(100)  # too soon: a strike
        link.transmit(link.client, link.client.session.ping(link.now))
        link.advance(INTERVAL_MS // 2)  # exactly I/2: not a strike, and resets
    assert link.server.closed() is None


# --- section 4: closing -----------------------------------------------------------------


def test_C1_close_sends_close_then_lingers_for_eof(link: Link) -> None:
    link.apply(link.server, link.server.session.close(Code.NORMAL, link.now))
    assert link.server.session.state is State.CLOSING
    assert link.server.closed() == Disconnect(Reason.CLOSED_LOCALLY, Code.NORMAL)
    assert link.client.closed() == Disconnect(Reason.PEER_CLOSED, Code.NORMAL)
    # Input is discarded while CLOSING; EOF ends it.
    assert link.server.session.receive_data(PING_FRAME, link.now) == (b"", ())
    assert link.server.session.eof_received(link.now) == (b"", ())
    assert link.server.session.state is State.CLOSED


def test_C1_the_linger_is_bounded(link: Link) -> None:
    link.client.muted = True
    link.apply(link.server, link.server.session.close(Code.NORMAL, link.now))
    link.advance(LINGER_MS - 1)
    assert link.server.session.state is State.CLOSING
    link.advance(1)
    assert link.server.session.state is State.CLOSED


def test_C2_close_is_not_answered(link: Link) -> None:
    link.send(link.client, encode_close(Code.NORMAL))
    assert link.server.closed() == Disconnect(Reason.PEER_CLOSED, Code.NORMAL)
    assert link.server.session.state is State.CLOSED
    assert link.server.sent_types() == [FrameType.WELCOME]


def test_C2_unknown_codes_are_accepted(link: Link) -> None:
    link.send(link.server, encode_close(0x7ABC))
    assert link.client.closed() == Disconnect(Reason.PEER_CLOSED, 0x7ABC)


def test_C3_a_violation_gets_error_and_error_is_not_answered(link: Link) -> None:
    link.send(link.client, encode_frame(FrameType.CLOSE, b"\x00"))  # malformed CLOSE
    assert link.server.sent_types()[-1] is FrameType.ERROR
    assert link.server.session.state is State.CLOSING
    assert link.client.closed() is not None
    assert link.client.session.state is State.CLOSED
    assert link.client.sent_types() == [FrameType.HELLO, FrameType.CLOSE]


def test_C3_frames_before_a_violation_are_acted_on(link: Link) -> None:
    link.send(link.client, PING_FRAME + encode_data(b"kept") + encode_hello("again", 0))
    assert link.server.sent_types() == [FrameType.WELCOME, FrameType.PONG, FrameType.ERROR]
    assert Message(b"kept") in link.server.events


def test_C4_shutdown_closes_with_going_away_and_its_own_grace(link: Link) -> None:
    session = link.server.session
    out, events = session.close(Code.GOING_AWAY, link.now, Reason.SHUTDOWN, linger=5.0)
    assert frames_of(out) == frames_of(encode_close(Code.GOING_AWAY))
    assert events == (Closed(Disconnect(Reason.SHUTDOWN, Code.GOING_AWAY)),)
    assert session.next_deadline() == link.now + 5.0


def test_C5_eof_ends_the_connection_and_a_partial_frame_is_a_truncation(link: Link) -> None:
    session = link.server.session
    assert session.eof_received(link.now)[1] == (
        Closed(Disconnect(Reason.PEER_CLOSED, detail="EOF")),
    )
    other = Link().connect().server.session
    assert other.receive_data(PING_FRAME[:3], 0.0) == (b"", ())
    out, events = other.eof_received(0.0)
    assert frames_of(out)[0][0] == FrameType.ERROR
    assert isinstance(events[0], Closed) and events[0].disconnect.code == Code.MALFORMED
    assert events[0].disconnect.detail == "EOF inside a frame, 3 bytes in"


def test_C5_frames_held_past_a_reads_share_are_served_before_the_eof(link: Link) -> None:
    session = link.server.session
    session.receive_data(encode_data(b"") * (MAX_FRAMES_PER_READ + 2), link.now)
    assert session.paused
    _, events = session.eof_received(link.now)
    eof = Closed(Disconnect(Reason.PEER_CLOSED, detail="EOF"))
    assert events == [Message(b""), Message(b""), eof]


def test_C3_frames_before_a_bad_header_are_served_then_error(link: Link) -> None:
    session = link.server.session
    bad = encode_frame(FrameType.PING)[:4] + bytes([0x42, 0])
    out, events = session.receive_data(encode_data(b"first") + PING_FRAME + bad, link.now)
    assert [FrameType(t) for t, _ in frames_of(out)] == [FrameType.PONG, FrameType.ERROR]
    assert events[0] == Message(b"first")
    assert isinstance(events[1], Closed) and events[1].disconnect.code == Code.UNKNOWN_TYPE
    assert session.state is State.CLOSING and not session.paused


def test_F4_a_frame_split_anywhere_is_acted_on_once_whole(link: Link) -> None:
    session = link.server.session
    frame = encode_data(b"split")
    for i in range(len(frame) - 1):
        assert session.receive_data(frame[i : i + 1], link.now) == (b"", ())
    assert session.buffered == len(frame) - 1
    assert session.receive_data(frame[-1:], link.now)[1] == [Message(b"split")]
    assert session.buffered == 0


def test_T9_a_read_acts_on_a_bounded_share_and_pauses_for_the_rest(link: Link) -> None:
    session = link.server.session
    _, events = session.receive_data(encode_data(b"") * (MAX_FRAMES_PER_READ + 10), link.now)
    assert len(events) == MAX_FRAMES_PER_READ
    assert session.paused and session.resume_at() == NEVER  # at the shell's next turn
    _, events = session.receive_data(b"", link.now)
    assert len(events) == 10
    assert not session.paused


def test_T9_a_peer_past_its_rate_pauses_the_session_until_the_window_ends() -> None:
    link = Link(server_config=config(Role.SERVER, peer_rate=5)).connect()
    session = link.server.session
    start = link.now
    session.receive_data(PONG_FRAME * 5, start)
    assert not session.paused
    session.receive_data(PONG_FRAME, start)
    assert session.paused and session.resume_at() == start + 1.0
    assert session.state is State.OPEN  # not refused: only not read


def test_the_receive_buffer_is_linear_in_the_bytes_fed() -> None:
    """A 16 MiB frame fed in 1 KiB pieces: a buffer copied whole for every piece costs
    seconds of CPU, one appended to about 0.05 s."""
    size = 16 * 1024 * 1024
    server = config(Role.SERVER, max_payload=size)
    link = Link(server_config=server).connect()
    session = link.server.session
    frame = encode_data(bytes(size))
    events: list[Event] = []
    started = time.process_time()
    for offset in range(0, len(frame), LINEAR_PIECE):
        events.extend(session.receive_data(frame[offset : offset + LINEAR_PIECE], link.now)[1])
        # Checked as it goes, so that a quadratic buffer fails in a second, not minutes.
        assert time.process_time() - started < LINEAR_CPU_BOUND, f"{offset} bytes in"
    assert events == [Message(bytes(size))]
    assert session.buffered == 0


def test_a_transport_failure_is_reported_once(link: Link) -> None:
    session = link.server.session
    assert session.abort(Reason.PEER_RESET, "ECONNRESET")[1] == (
        Closed(Disconnect(Reason.PEER_RESET, detail="ECONNRESET")),
    )
    assert session.abort(Reason.PEER_RESET, "again") == (b"", ())


def test_misuse_is_a_local_error(link: Link) -> None:
    with pytest.raises(LocalProtocolError):
        link.client.session.connected(0.0)  # twice
    with pytest.raises(LocalProtocolError):
        Session.server(config(Role.CLIENT), 0.0)
    closed = Link().connect()
    closed.send(closed.client, encode_close(Code.NORMAL))
    with pytest.raises(LocalProtocolError):
        closed.server.session.send_data(b"late", 0.0)
    error = encode_error(Code.SERVER_FULL, "x")
    assert frames_of(error)[0][0] == FrameType.ERROR


# --- section 5: reconnecting ------------------------------------------------------------


def test_R1_backoff_is_full_jitter_capped_from_the_first_retry() -> None:
    draws = iter([1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 0.0])
    backoff = Backoff(base=0.5, cap=3, rng=lambda: next(draws))
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 1.5]
    backoff.reset()  # after a successful handshake the window starts small again
    assert backoff.next_delay() == 0.5
    assert backoff.next_delay() == 0.0  # the first retry may come at once: full jitter


# --- section 1: AUTH, in-band re-authentication -------------------------------------


def v2_link() -> Link:
    """A link whose client speaks version 2 (AUTH needs it, A1)."""
    return Link(client_config=v2_client(token="t1")).connect()


def test_A1_a_version_2_welcome_offers_auth_and_a_version_1_welcome_cannot() -> None:
    assert v2_link().client.session.grant.welcome.reauth
    assert not Link().connect().client.session.grant.welcome.reauth


def test_A1_auth_on_a_version_1_connection_is_an_unknown_type(link: Link) -> None:
    link.send(link.client, encode_auth("fresh"))
    disconnect = link.server.closed()
    assert disconnect is not None and disconnect.code == Code.UNKNOWN_TYPE
    with pytest.raises(LocalProtocolError):  # a client sends AUTH only where offered
        Link().connect().client.session.send_auth("fresh", 0.0)


def test_A1_auth_before_hello_or_welcome_is_refused() -> None:
    link = raw()
    link.send(link.client, encode_auth("early"))
    disconnect = link.server.closed()
    assert disconnect is not None and disconnect.code == Code.HELLO_REQUIRED
    client = Session.client(config(Role.CLIENT), 0.0)
    client.connected(0.0)
    _, events = client.receive_data(AUTH_ACK_FRAME, 0.0)
    assert isinstance(events[0], Closed) and events[0].disconnect.code == Code.UNEXPECTED_FRAME


def test_A2_a_clients_auth_is_reported_to_the_server_with_its_token() -> None:
    link = v2_link()
    link.transmit(link.client, link.client.session.send_auth("t2", link.now))
    [received] = [e for e in link.server.events if isinstance(e, AuthReceived)]
    assert received.token == "t2" and "t2" not in repr(received)
    assert link.server.session.state is State.OPEN


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"", Code.MALFORMED), (encode_property(Prop.TOKEN, b"a b"), Code.UNAUTHORIZED)],
    ids=["no token", "a token of the wrong form"],
)
def test_A2_an_auth_without_a_usable_token_ends_the_connection(payload: bytes, code: Code) -> None:
    link = v2_link()
    link.send(link.client, encode_frame(FrameType.AUTH, payload))
    disconnect = link.server.closed()
    assert disconnect is not None and disconnect.code == code


def test_A3_the_server_answers_an_accepted_auth_with_an_empty_auth() -> None:
    link = v2_link()
    for token in ("t2", "t3"):  # A3: every AUTH is answered, in order
        link.transmit(link.client, link.client.session.send_auth(token, link.now))
        link.transmit(link.server, link.server.session.reauthenticated(link.now))
    assert link.server.sent_types()[-2:] == [FrameType.AUTH, FrameType.AUTH]
    assert link.server.sent[-1][1] == b""
    assert sum(isinstance(e, Reauthenticated) for e in link.client.events) == 2


def test_A3_a_refused_auth_is_unauthorized_and_ends_the_connection() -> None:
    link = v2_link()
    link.transmit(link.client, link.client.session.send_auth("stale", link.now))
    link.apply(link.server, link.server.session.refuse(Code.UNAUTHORIZED, "token expired", 0.0))
    disconnect = link.client.closed()
    assert disconnect is not None and disconnect.code == Code.UNAUTHORIZED


def test_A3_a_server_auth_carrying_a_token_is_malformed() -> None:
    link = v2_link()
    link.send(link.server, encode_auth("not-yours"))
    disconnect = link.client.closed()
    assert disconnect is not None and disconnect.code == Code.MALFORMED


def test_A1_a_client_whose_welcome_did_not_offer_auth_treats_it_as_unknown() -> None:
    link = Link(client_config=v2_client()).connect()
    # A version 2 WELCOME without REAUTH, as from a server that takes no AUTH.
    client = Session.client(v2_client(), 0.0)
    client.connected(0.0)
    client.receive_data(encode_welcome(Welcome(2, Scheme.CLIENT, 1000, 3000)), 0.0)
    assert client.state is State.OPEN and not client.grant.welcome.reauth
    _, events = client.receive_data(AUTH_ACK_FRAME, 0.0)
    assert isinstance(events[0], Closed) and events[0].disconnect.code == Code.UNKNOWN_TYPE
    assert link.client.session.grant.welcome.reauth  # hbloop's server offers it
