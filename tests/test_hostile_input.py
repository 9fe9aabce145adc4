"""Malformed input over real sockets against `hbloop serve` (protocol.md, section 9).

Every malformed case gets its ERROR code and then the server's FIN, while well-behaved
peers on the same server keep being answered.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import time
from collections import Counter
from collections.abc import Iterator

import psutil
import pytest

from hbloop.core.protocol import Frame, FrameDecoder
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_STRUCT,
    HELLO_FIXED,
    MAX_NAME_BYTES,
    PING_FRAME,
    Code,
    FrameType,
    encode_close,
    encode_data,
    encode_error,
    encode_frame,
    encode_hello,
)

from conftest import (
    HOSTILE_TEXT,
    HOSTILE_TEXT_SHOWN,
    WAIT_TIMEOUT,
    GoodPeers,
    RawPeer,
    ServerProcess,
    expect_last_word,
    raw_unsafe,
    wait_for,
)

# Short timers so that connections the server must time out go quickly.
SERVER_ARGS = ("--interval", "0.5", "--timeout", "1.5", "--handshake-timeout", "1")


def header(length: int, ftype: int, flags: int = 0) -> bytes:
    return HEADER_STRUCT.pack(length, ftype, flags)


def hello_frame(version: int = 1, name: bytes = b"x", name_len: int | None = None) -> bytes:
    size = len(name) if name_len is None else name_len
    return encode_frame(FrameType.HELLO, HELLO_FIXED.pack(version, 0, size) + name)


# (bytes sent on a fresh connection, the ERROR code expected back)
BEFORE_HELLO = {
    "http-request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Code.RESERVED_BITS),
    "tls-client-hello": (bytes.fromhex("16030100f5010000f10303"), Code.RESERVED_BITS),
    "garbage-unknown-type": (bytes.fromhex("deadbeef4200"), Code.UNKNOWN_TYPE),
    "length-4GiB": (header(0xFFFFFFFF, FrameType.DATA), Code.FRAME_TOO_LARGE),
    "length-max+1": (header(DEFAULT_MAX_PAYLOAD + 1, FrameType.HELLO), Code.FRAME_TOO_LARGE),
    "type-0x00": (header(0, 0x00), Code.UNKNOWN_TYPE),
    "type-0x09": (header(0, 0x09), Code.UNKNOWN_TYPE),
    "type-0xff": (header(0, 0xFF), Code.UNKNOWN_TYPE),
    "reserved-bit-0x01": (header(0, FrameType.PING, 0x01), Code.RESERVED_BITS),
    "reserved-bit-0x80": (header(11, FrameType.HELLO, 0x80), Code.RESERVED_BITS),
    "hello-version-3": (hello_frame(version=3), Code.UNSUPPORTED_VERSION),
    "hello-version-0": (hello_frame(version=0), Code.UNSUPPORTED_VERSION),
    "hello-empty": (encode_frame(FrameType.HELLO), Code.MALFORMED),
    "hello-too-short": (encode_frame(FrameType.HELLO, b"\x01\x00"), Code.MALFORMED),
    "hello-name-length-lies": (hello_frame(name=b"abc", name_len=9), Code.MALFORMED),
    "hello-name-empty": (hello_frame(name=b""), Code.BAD_NAME),
    "hello-name-too-long": (hello_frame(name=b"n" * (MAX_NAME_BYTES + 1)), Code.BAD_NAME),
    "hello-name-255-bytes": (hello_frame(name=b"n" * 255), Code.BAD_NAME),
    "hello-name-not-utf8": (hello_frame(name=b"\xff\xfe"), Code.BAD_NAME),
    "hello-name-control-char": (hello_frame(name=b"a\nb"), Code.BAD_NAME),
    "hello-name-bidi-override": (hello_frame(name="a\u202eb".encode()), Code.BAD_NAME),
    "hello-name-line-separator": (hello_frame(name="a\u2028b".encode()), Code.BAD_NAME),
    "ping-before-hello": (PING_FRAME, Code.HELLO_REQUIRED),
    "data-before-hello": (encode_data(b"hi"), Code.HELLO_REQUIRED),
    "close-before-hello": (encode_close(Code.NORMAL), Code.HELLO_REQUIRED),
}

# (bytes sent after a successful handshake, the ERROR code expected back)
AFTER_HELLO = {
    "second-hello": (encode_hello("again", 0), Code.DUPLICATE_HELLO),
    "welcome-from-client": (encode_frame(FrameType.WELCOME, bytes(10)), Code.UNEXPECTED_FRAME),
    "ping-with-payload": (header(1, FrameType.PING) + b"x", Code.MALFORMED),
    "close-wrong-size": (encode_frame(FrameType.CLOSE, b"\x00\x00\x00"), Code.MALFORMED),
    "error-too-short": (encode_frame(FrameType.ERROR, b"\x01"), Code.MALFORMED),
    "reserved-bits": (header(0, FrameType.PING, 0x02), Code.RESERVED_BITS),
    "unknown-type": (header(0, 0x42), Code.UNKNOWN_TYPE),
    "length-4GiB": (header(0xFFFFFFFF, FrameType.DATA), Code.FRAME_TOO_LARGE),
    "garbage-after-traffic": (b"\x00garbage", Code.RESERVED_BITS),
}

# Cut short, then EOF (shutdown SHUT_WR): the peer can still read the ERROR.
TRUNCATED = {
    "header-only-part": (b"\x00\x00\x00", False),
    "hello-cut": (encode_hello("trunc", 0)[:-2], False),
    "data-cut": (encode_data(b"0123456789")[:-3], True),
    "header-cut-after-hello": (PING_FRAME[:4], True),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(*SERVER_ARGS)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def good(server: ServerProcess) -> Iterator[GoodPeers]:
    peers = GoodPeers(server.address, prefix="bystander")
    yield peers
    peers.close()


def assert_logged(server: ServerProcess, peer: RawPeer, code: Code) -> None:
    port = peer.sock.getsockname()[1]
    server.wait_line(rf"disconnect 127\.0\.0\.1:{port} .*reason=protocol_error {code.name}\b")


@pytest.mark.parametrize(("data", "code"), BEFORE_HELLO.values(), ids=BEFORE_HELLO.keys())
def test_malformed_first_frame_gets_its_error_then_eof(
    server: ServerProcess, good: GoodPeers, data: bytes, code: Code
) -> None:
    with RawPeer(server.address) as peer:
        # No EOF from our side: the answer must come from the bytes alone (for a
        # huge length, before any payload byte: nothing is allocated or awaited).
        peer.send(data)
        expect_last_word(peer, FrameType.ERROR, code)
        assert_logged(server, peer, code)
    good.assert_served(server, rounds=0)


@pytest.mark.parametrize(("data", "code"), AFTER_HELLO.values(), ids=AFTER_HELLO.keys())
def test_malformed_frame_after_handshake_gets_its_error_then_eof(
    server: ServerProcess, good: GoodPeers, data: bytes, code: Code
) -> None:
    with RawPeer(server.address) as peer:
        assert peer.hello("hostile")[0] == FrameType.WELCOME
        peer.send(PING_FRAME)  # some valid traffic first: the connection is OPEN
        assert peer.recv()[0] == FrameType.PONG
        peer.send(data)
        expect_last_word(peer, FrameType.ERROR, code)
        assert_logged(server, peer, code)
    good.assert_served(server, rounds=0)


@pytest.mark.parametrize(("data", "after_hello"), TRUNCATED.values(), ids=TRUNCATED.keys())
def test_truncated_frame_then_eof_gets_malformed(
    server: ServerProcess, good: GoodPeers, data: bytes, after_hello: bool
) -> None:
    with RawPeer(server.address) as peer:
        if after_hello:
            assert peer.hello("truncator")[0] == FrameType.WELCOME
        peer.send(data)
        peer.sock.shutdown(socket.SHUT_WR)
        expect_last_word(peer, FrameType.ERROR, Code.MALFORMED)
        assert_logged(server, peer, Code.MALFORMED)
    good.assert_served(server, rounds=0)


def test_a_peer_error_message_is_logged_escaped(server: ServerProcess, good: GoodPeers) -> None:
    with RawPeer(server.address) as peer:
        assert peer.hello("reporter")[0] == FrameType.WELCOME
        peer.send(encode_error(Code.MALFORMED, HOSTILE_TEXT))
        port = peer.sock.getsockname()[1]
        line = server.wait_line(rf"disconnect 127\.0\.0\.1:{port} .*reason=peer_error MALFORMED")
    assert line.string.endswith(" " + HOSTILE_TEXT_SHOWN)
    assert not server.find(r"^INFO hbloop\.server: forged"), "a peer forged a log line"
    assert raw_unsafe(server.lines()) == []
    good.assert_served(server, rounds=0)


def test_bystanders_were_served_throughout(server: ServerProcess, good: GoodPeers) -> None:
    good.assert_served(server, rounds=2)


# --- the garbage flood ----------------------------------------------------------------

# Hundreds of hostile connections at once: well above anything a handful of
# well-behaved peers would notice if the server handled each one slowly.
FLOOD_CONNECTIONS = 300
FLOOD_SEED = 4  # fixed, so that a failure can be replayed
MAX_GARBAGE = 512  # bytes of garbage per connection, at most
# Every flood connection must be closed by the server: by an ERROR at once, or by the
# handshake deadline / heartbeat timeout for garbage that happens to parse.
FLOOD_DEADLINE = 20.0


def random_garbage(rng: random.Random) -> bytes:
    """Random bytes, sometimes behind a valid HELLO or a plausible header."""
    noise = rng.randbytes(rng.randint(1, MAX_GARBAGE))
    kind = rng.randrange(3)
    if kind == 0:
        return noise
    if kind == 1:
        return encode_hello(f"g{rng.randrange(1000)}", 0) + noise
    ftype = rng.choice(list(FrameType))
    return header(rng.randrange(DEFAULT_MAX_PAYLOAD), ftype) + noise


def drain_until_closed(socks: list[socket.socket], deadline: float) -> dict[int, list[Frame]]:
    """Read every socket until the server closes it; return each one's frames."""
    frames: dict[int, list[Frame]] = {}
    decoders: dict[int, FrameDecoder | None] = {}
    selector = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
        frames[i] = []
        decoders[i] = FrameDecoder(DEFAULT_MAX_PAYLOAD)
    open_count = len(socks)
    while open_count and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            i = key.data
            try:
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                decoder = decoders[i]
                if decoder is not None:
                    try:
                        frames[i].extend(decoder.feed(data))
                    except Exception:
                        decoders[i] = None  # the server answered garbage? counted below
                        frames[i].append((-1, data))
                continue
            selector.unregister(key.fileobj)
            open_count -= 1
    selector.close()
    assert open_count == 0, f"{open_count} flood connections still open after the deadline"
    return frames


def test_garbage_flood_leaves_good_clients_alone(serve, good_peers) -> None:
    server = serve(*SERVER_ARGS)
    good = good_peers(server.address)
    process = psutil.Process(server.proc.pid)
    fds_before = process.num_fds()
    rng = random.Random(FLOOD_SEED)

    socks: list[socket.socket] = []
    try:
        for _ in range(FLOOD_CONNECTIONS):
            sock = socket.create_connection(server.address, timeout=WAIT_TIMEOUT)
            socks.append(sock)
            # The server may refuse a connection before all its garbage is sent; it is
            # drained below all the same.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(random_garbage(rng))
        outcomes = drain_until_closed(socks, time.monotonic() + FLOOD_DEADLINE)
    finally:
        for sock in socks:
            sock.close()

    # Each connection ended with one last frame from the server (ERROR, or CLOSE for a
    # deadline) and never with anything undecodable.
    last_words: Counter[str] = Counter()
    for frames in outcomes.values():
        assert all(ftype != -1 for ftype, _ in frames), "the server sent undecodable bytes"
        if frames:
            last_words[FrameType(frames[-1][0]).name] += 1
    assert last_words["ERROR"] > FLOOD_CONNECTIONS // 2, last_words

    good.assert_served(server)
    # Every hostile connection was released: no descriptor leaked.
    assert wait_for(lambda: process.num_fds() <= fds_before), (
        f"{process.num_fds()} fds open, {fds_before} before the flood"
    )
    disconnects = server.find(r"disconnect .* reason=(protocol_error|handshake_timeout|timeout)")
    assert len(disconnects) >= FLOOD_CONNECTIONS - len(good.names)


# Enough attempts that buffering even a small part of each announced frame would show.
HUGE_FRAME_ATTEMPTS = 50
HUGE_FRAME_PREFIX = 4096  # payload bytes sent after the header, which must be ignored
# Allocator noise and log buffers; 50 x 4 GiB would be noticed long before this.
MAX_RSS_GROWTH = 8 * 1024 * 1024


def test_huge_length_fields_allocate_nothing(serve, good_peers) -> None:
    """Many connections each announcing a 4 GiB frame: refused on the header, and the
    server's memory does not move."""
    server = serve(*SERVER_ARGS)
    good = good_peers(server.address, count=1)
    process = psutil.Process(server.proc.pid)
    rss_before = process.memory_info().rss
    for _ in range(HUGE_FRAME_ATTEMPTS):
        with RawPeer(server.address) as peer:
            assert peer.hello("greedy")[0] == FrameType.WELCOME
            peer.send(header(0xFFFFFFFF, FrameType.DATA) + bytes(HUGE_FRAME_PREFIX))
            expect_last_word(peer, FrameType.ERROR, Code.FRAME_TOO_LARGE)
    growth = process.memory_info().rss - rss_before
    assert growth < MAX_RSS_GROWTH, f"server RSS grew by {growth} bytes"
    good.assert_served(server)
