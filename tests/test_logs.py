"""Log output: text and JSON lines, structured fields, and no line a peer can forge."""

from __future__ import annotations

import json
import logging

from hbloop.core.logfields import fields
from hbloop.core.protocol import escape_unsafe
from hbloop.core.wire import Code, FrameType, encode_error
from hbloop.ops.logs import JsonFormatter, TextFormatter

# A line a hostile peer would like to appear in our log, smuggled in its ERROR message.
FORGED = "2026-01-01 00:00:00,000 INFO hbloop.server: connect 10.0.0.1:1 name=admin"


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("hbloop.test", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_escape_puts_control_and_separator_characters_on_one_line():
    assert escape_unsafe("a\nb\rc\td") == "a\\x0ab\\x0dc\\x09d"
    assert escape_unsafe("\x1b[31mred\x7f\x85") == "\\x1b[31mred\\x7f\\x85"
    assert escape_unsafe("line\u2028para\u2029\u202e") == "line\\u2028para\\u2029\\u202e"
    assert (
        escape_unsafe("plain ASCII, UTF-8: é ü 名前, a\\b") == "plain ASCII, UTF-8: é ü 名前, a\\b"
    )


def test_text_format_escapes_the_message_only():
    line = TextFormatter().format(record("peer said %s", "bye\n" + FORGED))
    assert "\n" not in line
    assert line.endswith("INFO hbloop.test: peer said bye\\x0a" + FORGED)


def test_json_format_has_the_core_keys_and_the_fields():
    line = JsonFormatter().format(
        record("connect %s", "x\n", **fields(peer="127.0.0.1:5", name="n", message="not mine"))
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "info" and entry["logger"] == "hbloop.test"
    assert entry["message"] == "connect x\n"  # a field cannot replace a core key
    assert entry["peer"] == "127.0.0.1:5" and entry["name"] == "n"
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]


def hostile_goodbye(server, raw_peer) -> None:
    """A peer that connects, then says ERROR with a forged log line in its message."""
    peer = raw_peer(server.address)
    assert peer.hello("hostile")[0] == FrameType.WELCOME
    peer.send(encode_error(Code.NORMAL, "bye\n" + FORGED))
    peer.recv_until_eof()


def test_a_peer_cannot_forge_a_text_line(serve, raw_peer):
    server = serve()
    hostile_goodbye(server, raw_peer)
    line = server.wait_line(r"disconnect .* name=hostile .*reason=peer_error").string
    # Quoted, as its "name=" could pass for a field (hbloop.core.logfields.trailing_text).
    assert line.endswith('"bye\\x0a' + FORGED + '"')
    assert not server.find("^" + FORGED[:10]), "a forged line reached the log"


def test_json_log_lines_carry_structured_fields(serve, raw_peer):
    server = serve("--log-format", "json")
    hostile_goodbye(server, raw_peer)
    server.wait_line(r'"name": "hostile", "reason": "peer_error"')
    entries = [json.loads(line) for line in server.lines()]  # every line is JSON
    assert all(entry.keys() >= {"time", "level", "logger", "message"} for entry in entries)
    connect = next(e for e in entries if e.get("event") == "connect")
    assert connect["name"] == "hostile" and connect["peer"].startswith("127.0.0.1:")
    assert connect["logger"] == "hbloop.server" and connect["level"] == "info"
    disconnect = next(e for e in entries if e.get("event") == "disconnect")
    assert disconnect["reason"] == "peer_error"
    # The peer's text arrives escaped (protocol.md F5), and JSON keeps that escape.
    assert disconnect["message"].endswith('"bye\\x0a' + FORGED + '"')
