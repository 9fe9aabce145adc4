"""``-v``: one debug line per frame in and out, never a payload or a credential, peer
text escaped; and with tracing off, a heartbeat runs exactly the plain hot path."""

from __future__ import annotations

import json
import select
import sys
from collections import Counter
from types import FrameType as PyFrame
from typing import Any

from fakeserver import FakeServer, say, welcome

from hbloop.core.policy import ServerPolicy
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    PING_FRAME,
    VERSION_2,
    Code,
    FrameType,
    Scheme,
    encode_close,
    encode_data,
    encode_error,
    encode_hello,
)
from hbloop.net.loop import EventLoop
from hbloop.server import Server

from conftest import HOSTILE_TEXT, HOSTILE_TEXT_SHOWN, WAIT_TIMEOUT, RawPeer, raw_unsafe

# What must never reach the log: a DATA payload and a HELLO credential.
SECRET = b"payload-not-for-the-log"
TOKEN = "credential-not-for-the-log"


def test_serve_v_logs_each_frame_as_json_fields(serve):
    # The fixture passes --log-level info: -v overrides it with debug.
    server = serve("-v", "--log-format", "json")
    with RawPeer(server.address) as peer:
        label = "{}:{}".format(*peer.sock.getsockname())
        peer.send(encode_hello("tracer", 1000, token=TOKEN))
        assert peer.recv()[0] == FrameType.WELCOME
        peer.send(PING_FRAME)
        assert peer.recv()[0] == FrameType.PONG
        peer.send(encode_data(SECRET))
        assert peer.recv() == (FrameType.DATA, SECRET)
        peer.send(encode_close(Code.NORMAL))
        assert peer.recv_until_eof() == []
    server.wait_line(r"disconnect .*name=tracer")
    entries = [json.loads(line) for line in server.lines()]
    traced = [entry for entry in entries if entry["logger"] == "hbloop.trace"]
    hello_length = len(encode_hello("tracer", 1000, token=TOKEN)) - HEADER_SIZE
    assert [(e["dir"], e["type"], e["length"], e["code"]) for e in traced] == [
        ("in", "HELLO", hello_length, None),
        ("out", "WELCOME", 10, None),
        ("in", "PING", 0, None),
        ("out", "PONG", 0, None),
        ("in", "DATA", len(SECRET), None),
        ("out", "DATA", len(SECRET), None),
        ("in", "CLOSE", 2, "NORMAL"),
    ]
    assert {(e["level"], e["peer"], e["event"]) for e in traced} == {("debug", label, "frame")}
    assert traced[-1]["message"] == f"frame in {label} CLOSE len=2 code=NORMAL"
    everything = "\n".join(server.lines())
    assert SECRET.decode() not in everything and TOKEN not in everything


def test_client_v_logs_frames_and_escapes_the_peer_text(spawn):
    fake = FakeServer(
        welcome(Scheme.CLIENT, 10_000, 30_000), say(encode_error(Code.MALFORMED, HOSTILE_TEXT))
    )
    try:
        # The client logs at warning by default: -v brings it to debug.
        client = spawn("client", "--port", str(fake.address[1]), "-n", "x", "--no-reconnect", "-v")
        assert client.wait() == 1
    finally:
        fake.close()
    server = f"127.0.0.1:{fake.address[1]}"
    lines = client.lines()
    # The client's HELLO is version 2's, with its maximum payload as a property (H10).
    sent = encode_hello("x", 0, VERSION_2, max_payload=DEFAULT_MAX_PAYLOAD)
    hello = f"HELLO len={len(sent) - HEADER_SIZE}"
    assert any(line.endswith(f"hbloop.trace: frame out {server} {hello}") for line in lines)
    assert any(line.endswith(f"hbloop.trace: frame in {server} WELCOME len=10") for line in lines)
    error_length = 2 + len(HOSTILE_TEXT.encode())
    # One token: quoted, since it has spaces (hbloop.core.logfields.token).
    shown = f'ERROR len={error_length} code=MALFORMED message="{HOSTILE_TEXT_SHOWN}"'
    assert any(line.endswith(f"hbloop.trace: frame in {server} {shown}") for line in lines)
    assert raw_unsafe(lines) == []


# --- nothing when off -----------------------------------------------------------------

# The functions that answer one PING, tracing off: the read callback, the session and
# its decoder (with its heartbeat histogram), and the write.
HOT_PATH = {
    "Channel.on_readable",
    "Session.receive_heartbeat",
    "Channel._send",
}

# The bytecodes they execute for it, by CPython version (176 since the quick PONG is
# counted on scrape, not per write: 213 before; 341 before a lone heartbeat was matched
# by its bytes, without the decoder; no test for TLS or tracing, which only a
# LayeredChannel has). Any change to the hot path
# changes this number: update it deliberately, saying why in the commit, and never to
# make room for a per-frame check of a setting.
HEARTBEAT_BYTECODES = {(3, 11): 176}


def heartbeat_bytecodes(trace: bool) -> Counter[str]:
    """Bytecodes executed, by function, when a server peer's read callback finds one
    PING waiting."""
    loop = EventLoop()
    policy = ServerPolicy(interval=1, timeout=3, max_connections=10)
    server = Server("127.0.0.1", 0, policy, loop=loop, trace=trace)
    counts: Counter[str] = Counter()

    def count(frame: PyFrame, event: str, arg: Any) -> Any:
        if event == "opcode":
            counts[frame.f_code.co_qualname] += 1
        return count

    def enter(frame: PyFrame, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return count

    try:
        with RawPeer(server.start()) as client:
            client.send(encode_hello("counted", 1000))
            assert loop.run_until(lambda: bool(server.peers), WAIT_TIMEOUT)
            assert client.recv()[0] == FrameType.WELCOME
            (peer,) = server.peers
            channel = peer._channel
            client.send(PING_FRAME)
            assert select.select([channel.sock], [], [], WAIT_TIMEOUT)[0], "the PING never came"
            sys.settrace(enter)
            try:
                channel.on_readable()
            finally:
                sys.settrace(None)
            assert client.recv()[0] == FrameType.PONG
        server.shutdown()
        assert loop.run_until(lambda: channel.released, WAIT_TIMEOUT)
    finally:
        loop.close()
    return counts


def test_tracing_off_runs_the_plain_heartbeat_path():
    off = heartbeat_bytecodes(trace=False)
    assert set(off) == HOT_PATH
    expected = HEARTBEAT_BYTECODES.get(sys.version_info[:2])
    if expected is not None:  # the set of functions above holds on any version
        assert sum(off.values()) == expected, dict(off)
    # The count sees tracing when it is on: the same path, and the trace's code.
    on = heartbeat_bytecodes(trace=True)
    assert set(on) > {"LayeredChannel.on_readable", "trace_frames", "Tracer.received"}
