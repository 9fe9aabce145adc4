"""A name (or other text a peer controls) is one token of a text log line: bare when
plain, quoted with escapes otherwise (``hbloop.core.logfields``), so that a name such as
``bob age=999.0s reason=timeout`` cannot add fields to the lines it appears in."""

from __future__ import annotations

import json
import re

import pytest

from hbloop.core.logfields import token, trailing_text
from hbloop.core.wire import Code, FrameType, encode_error
from hbloop.presence.tools import Event

from conftest import (
    RawPeer,
    RedisProcess,
    ServerProcess,
    expect_last_word,
    frame_code,
    raw_unsafe,
)

# A name that, written bare, would forge the fields of a disconnect line: refused at
# HELLO since names follow PRECIS (protocol.md N1: no spaces), and never written raw.
FORGING = "bob age=999.0s reason=timeout"
# What PRECIS leaves a forger: '=' and quotes without spaces. Written bare it would read
# as a second field glued to the first, so it is quoted.
GLUED = 'bob"age=999.0s"reason=timeout'
# Quotes and backslashes: a name that would close a quoted value early, or escape it.
QUOTING = '"eve"name=root\\'
GLUED_SHOWN = r'"bob\"age=999.0s\"reason=timeout"'  # as a text line shows GLUED
# A newline and a forged record: refused at HELLO (BAD_NAME), and never written raw.
NEWLINE = "mallory\n2026-01-01 00:00:00,000 INFO hbloop.server: connect 10.0.0.1:1 name=root"

# A logfmt token: runs of characters other than whitespace and quotes, and quoted
# strings (with backslash escapes), side by side: name="a b" is one token.
LOG_TOKEN = re.compile(r'(?:[^\s"]+|"(?:[^"\\]|\\.)*")+')
FIELD = re.compile(r"(\w+)=(.*)", re.DOTALL)


def parse_fields(message: str) -> dict[str, list[str]]:
    """Every key=value field of a text log message, as a logfmt parser reads it, with
    quoted values unquoted; a key that occurs twice has two values."""
    found: dict[str, list[str]] = {}
    for word in LOG_TOKEN.findall(message):
        match = FIELD.fullmatch(word)
        if match is None:
            continue
        key, value = match.groups()
        if value.startswith('"'):
            value = re.sub(r"\\([\\\"])", r"\1", value[1:-1])
        found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("alice", "alice"),
        ("sensor-7.eu_1@edge", "sensor-7.eu_1@edge"),
        ("O'Brien", "O'Brien"),
        ("zoë", "zoë"),
        (FORGING, '"bob age=999.0s reason=timeout"'),
        (GLUED, GLUED_SHOWN),
        (QUOTING, r'"\"eve\"name=root\\"'),
        ("a\u00a0b", '"a\u00a0b"'),  # a no-break space is white space too
        ("x\u202ey", r'"x\u202ey"'),  # a bidi override, escaped
        ("", '""'),
    ],
)
def test_a_token_is_bare_only_when_plain(text: str, shown: str) -> None:
    assert token(text) == shown
    fields = parse_fields(f"x name={token(text)} age=1.0s")
    assert len(fields["name"]) == 1 and fields["age"] == ["1.0s"]


def test_trailing_text_is_quoted_only_when_it_could_pass_for_fields() -> None:
    assert trailing_text("1000 connections") == "1000 connections"
    assert trailing_text("bye\nnow") == r"bye\x0anow"
    assert trailing_text("x name=root") == '"x name=root"'
    assert trailing_text('say "hi"') == r'"say \"hi\""'


def logged_lines(server: ServerProcess, port: int) -> list[str]:
    """The server's connect and disconnect lines for the connection from ``port``,
    once it has disconnected."""
    server.wait_line(rf"disconnect 127\.0\.0\.1:{port} ")
    return [m.string for m in server.find(rf"(?:connect|disconnect) 127\.0\.0\.1:{port} ")]


@pytest.mark.parametrize("name", [GLUED, QUOTING], ids=["glued", "quoting"])
def test_a_name_is_exactly_one_field_of_the_server_lines(serve, name: str) -> None:
    server = serve()
    with RawPeer(server.address) as peer:
        assert peer.hello(name)[0] == FrameType.WELCOME
        port = peer.sock.getsockname()[1]
    lines = logged_lines(server, port)
    assert [line.split(": ", 1)[1].split()[0] for line in lines] == ["connect", "disconnect"]
    for line in lines:
        fields = parse_fields(line.split("hbloop.server: ", 1)[1])
        assert fields["name"] == [name], line
        assert all(len(values) == 1 for values in fields.values()), line
    assert parse_fields(lines[1])["reason"] == ["peer_closed"]


@pytest.mark.parametrize("name", [NEWLINE, FORGING], ids=["newline", "spaces"])
def test_a_name_with_a_newline_or_spaces_is_refused_and_never_written_raw(serve, name: str) -> None:
    server = serve()
    with RawPeer(server.address) as peer:
        refusal = peer.hello(name)
        assert refusal[0] == FrameType.ERROR and frame_code(refusal) == Code.BAD_NAME
        (line,) = logged_lines(server, peer.sock.getsockname()[1])
    fields = parse_fields(line.split("hbloop.server: ", 1)[1])
    assert fields["name"] == ["-"] and all(len(values) == 1 for values in fields.values())
    assert not server.find(r"^2026-01-01"), "a forged line reached the log"
    assert raw_unsafe(server.lines()) == []


def test_an_error_message_cannot_add_fields_to_the_disconnect_line(serve) -> None:
    server = serve()
    with RawPeer(server.address) as peer:
        assert peer.hello("carol")[0] == FrameType.WELCOME
        peer.send(encode_error(Code.NORMAL, f"bye name={FORGING}"))
        port = peer.sock.getsockname()[1]
        peer.recv_until_eof()
    line = logged_lines(server, port)[-1]
    fields = parse_fields(line.split("hbloop.server: ", 1)[1])
    assert fields["name"] == ["carol"] and all(len(v) == 1 for v in fields.values()), line
    assert line.endswith(f' NORMAL "bye name={FORGING}"')


def test_json_lines_keep_the_name_as_it_is(serve) -> None:
    server = serve("--log-format", "json")
    with RawPeer(server.address) as peer:
        assert peer.hello(GLUED)[0] == FrameType.WELCOME
        peer.close()
    server.wait_line(r'"event": "disconnect"')
    entries = [json.loads(line) for line in server.lines()]
    named = [e for e in entries if e.get("event") in ("connect", "disconnect")]
    assert [e["name"] for e in named] == [GLUED, GLUED]
    assert all(f"name={GLUED_SHOWN}" in e["message"] for e in named)


def test_the_client_status_line_quotes_its_name(serve, spawn) -> None:
    server = serve()
    client = spawn("client", "--port", str(server.port), "-n", GLUED)
    client.wait_line(r"connected to ")
    assert client.find(rf"connected to \S+ as {re.escape(GLUED_SHOWN)}: interval")


def test_presence_watch_lines_quote_the_name() -> None:
    event = Event("1700000000000-0", {"event": "join", "name": FORGING, "node": "a@1"})
    assert f' "{FORGING}"  node=a@1' in event.to_text()


def test_presence_lines_quote_the_name(serve, redis_server: RedisProcess, prefix: str) -> None:
    server = serve(
        *("--redis", redis_server.url, "--redis-prefix", prefix, "--on-duplicate", "replace")
    )
    server.wait_line(r"presence: resync of node")
    with RawPeer(server.address) as older, RawPeer(server.address) as newer:
        assert older.hello(GLUED)[0] == FrameType.WELCOME
        assert newer.hello(GLUED)[0] == FrameType.WELCOME
        expect_last_word(older, FrameType.CLOSE, Code.TAKEN_OVER)
    line = server.wait_line(r"presence: .* reconnected to this node").string
    assert f"presence: {GLUED_SHOWN} reconnected to this node" in line
