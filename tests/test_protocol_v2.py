"""Version 2's compatibility promises over loopback (protocol.md H10): a version 1 peer
is served as before, a version 2 peer gets the server's properties, and a version 2
client talking to a version 1-only server falls back to version 1 once."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from fakeserver import FakeServer, record_silently

from hbloop.check import CASES, CaseSkipped, Checker, Settings
from hbloop.client import Client
from hbloop.core.protocol import FrameDecoder, parse_error, parse_welcome
from hbloop.core.session import Disconnect, Reason
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MUST_UNDERSTAND,
    VERSION_1,
    VERSION_2,
    Code,
    FrameType,
    Scheme,
    Welcome,
    encode_error,
    encode_frame,
    encode_hello,
    encode_property,
    encode_welcome,
)
from hbloop.net.loop import EventLoop

from conftest import WAIT_TIMEOUT

# A --max-frame other than the default, so that the WELCOME's property shows the setting.
SERVER_MAX_FRAME = 8192


def test_a_version_1_hello_gets_version_1s_welcome_byte_for_byte(serve, raw_peer):
    server = serve("--interval", "2", "--timeout", "6")
    ftype, payload = raw_peer(server.address).hello("alice", 1000)
    assert ftype == FrameType.WELCOME
    assert payload == encode_welcome(Welcome(VERSION_1, Scheme.CLIENT, 1000, 3000))[HEADER_SIZE:]


def test_a_version_2_hello_gets_the_servers_maximum_payload(serve, raw_peer):
    """F2, and C6: the reconnect window is the server's drain period."""
    server = serve(
        *("--interval", "2", "--timeout", "6", "--max-frame", str(SERVER_MAX_FRAME)),
        *("--drain-period", "3"),
    )
    peer = raw_peer(server.address)
    peer.send(encode_hello("alice", 1000, VERSION_2, token=None, max_payload=4096))
    ftype, payload = peer.recv()
    assert ftype == FrameType.WELCOME
    welcome = parse_welcome(payload, VERSION_2)
    assert welcome == Welcome(
        VERSION_2, Scheme.CLIENT, 1000, 3000, SERVER_MAX_FRAME, 3000, reauth=True
    )


def test_an_unknown_must_understand_property_is_refused(serve, raw_peer):
    server = serve()
    peer = raw_peer(server.address)
    hello = encode_hello("alice", 0, VERSION_2)
    payload = hello[HEADER_SIZE:] + encode_property(MUST_UNDERSTAND | 0x7001, b"x")
    peer.send(encode_frame(FrameType.HELLO, payload))
    ftype, answer = peer.recv()
    assert ftype == FrameType.ERROR
    assert parse_error(answer)[0] == Code.UNSUPPORTED_PROPERTY


def test_an_unknown_property_without_the_bit_is_skipped(serve, raw_peer):
    server = serve()
    peer = raw_peer(server.address)
    hello = encode_hello("alice", 0, VERSION_2)
    peer.send(encode_frame(FrameType.HELLO, hello[HEADER_SIZE:] + encode_property(0x7001, b"x")))
    assert peer.recv()[0] == FrameType.WELCOME


class VersionOneServer(FakeServer):
    """A scripted server of version 1 only, as one written before version 2: it refuses
    any other HELLO version with ERROR UNSUPPORTED_VERSION and closes, and answers a
    version 1 HELLO with version 1's WELCOME (when ``welcomes``). It records the version
    of every HELLO."""

    def __init__(self, welcomes: bool) -> None:
        self.welcomes = welcomes
        self.versions: list[int] = []
        self._open: list[socket.socket] = []
        super().__init__(Welcome(VERSION_1, Scheme.CLIENT, 1000, 3000), record_silently)
        self.port: int = self.address[1]

    def _serve(self, sock: socket.socket) -> None:
        decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
        frames: list[tuple[int, bytes]] = []
        while not frames:
            data = sock.recv(65536)
            if not data:
                sock.close()
                return
            frames = decoder.feed(data)
        version = frames[0][1][0]
        welcomed = version == VERSION_1 and self.welcomes
        with self._lock:
            self.versions.append(version)
            if welcomed:
                self._open.append(sock)  # held open until close()
        if welcomed:
            sock.sendall(encode_welcome(self.welcome))
            return
        with sock:
            sock.settimeout(WAIT_TIMEOUT)
            try:
                sock.sendall(encode_error(Code.UNSUPPORTED_VERSION, f"version {version} unknown"))
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):  # until the client's EOF (C1)
                    pass
            except OSError:
                return  # the client reset it: nothing more to say

    def seen(self) -> list[int]:
        with self._lock:
            return list(self.versions)

    def close(self) -> None:
        super().close()
        with self._lock:
            for sock in self._open:
                sock.close()


@pytest.fixture
def version_one_server() -> Iterator[type[VersionOneServer]]:
    made: list[VersionOneServer] = []

    class Made(VersionOneServer):
        def __init__(self, welcomes: bool) -> None:
            super().__init__(welcomes)
            made.append(self)

    yield Made
    for server in made:
        server.close()


def run_client(port: int, until_welcome: bool) -> tuple[Client, list[Welcome], list[object]]:
    loop = EventLoop()
    welcomes: list[Welcome] = []
    ends: list[object] = []
    client = Client(
        "127.0.0.1",
        port,
        "alice",
        loop=loop,
        on_welcome=welcomes.append,
        on_disconnect=lambda d, retry: ends.append((d, retry)),
    )
    client.start()
    done = (lambda: bool(welcomes)) if until_welcome else (lambda: client.stopped is not None)
    assert loop.run_until(done, WAIT_TIMEOUT), "the client did not get there in time"
    client.close()
    loop.run_until(lambda: client.done, WAIT_TIMEOUT)
    loop.close()
    return client, welcomes, ends


def test_the_client_falls_back_to_version_1_once(version_one_server):
    server = version_one_server(welcomes=True)
    _, welcomes, ends = run_client(server.port, until_welcome=True)
    assert server.seen() == [VERSION_2, VERSION_1]
    refused = Disconnect(Reason.PEER_ERROR, Code.UNSUPPORTED_VERSION, "version 2 unknown")
    assert ends[0] == (refused, 0.0)  # retried at once, not after a back-off delay
    assert [w.version for w in welcomes] == [VERSION_1]


def test_a_server_refusing_version_1_too_stops_the_client(version_one_server):
    server = version_one_server(welcomes=False)
    client, welcomes, _ = run_client(server.port, until_welcome=False)
    assert server.seen() == [VERSION_2, VERSION_1]  # one fall-back, then final (H8)
    assert welcomes == []
    assert client.stopped is not None and client.stopped.code == Code.UNSUPPORTED_VERSION


def test_the_client_speaks_version_2_to_hbloops_server(serve):
    server = serve("--max-frame", str(SERVER_MAX_FRAME))
    loop = EventLoop()
    client = Client("127.0.0.1", server.port, "alice", loop=loop)
    client.start()
    assert loop.run_until(lambda: client.welcome is not None, WAIT_TIMEOUT)
    connection = client.connection
    assert connection is not None
    assert connection.session.peer_max_payload == SERVER_MAX_FRAME
    assert client.welcome is not None
    assert (client.welcome.version, client.welcome.max_payload) == (VERSION_2, SERVER_MAX_FRAME)
    client.close()
    loop.run_until(lambda: client.done, WAIT_TIMEOUT)
    loop.close()


VERSION_2_CASES = ("H10", "F6")


def test_hbloop_check_skips_the_version_2_cases_for_a_version_1_server(version_one_server):
    server = version_one_server(welcomes=True)
    checker = Checker(Settings("127.0.0.1", server.port))
    cases = [case for case in CASES if case.statement in VERSION_2_CASES]
    assert len(cases) == 3
    try:
        for case in cases:
            with pytest.raises(CaseSkipped, match="version 1 only"):
                case.run(checker)
    finally:
        checker.close_all()
    assert server.seen() == [VERSION_2] * len(cases)
