"""Cluster-wide presence with real `hbloop serve --redis` processes and a real Redis.

The servers run with a 1 s node TTL and a 0.25 s reaper, so that the bounds the
defaults give in seconds tens (12.4 s) are checked here in about one.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import pytest

from hbloop.core.names import skeleton
from hbloop.core.wire import PING_FRAME, Code, FrameType, encode_close
from hbloop.presence.node import JITTER
from hbloop.presence.scripts import Keys

from conftest import (
    HBLOOP,
    ROOT,
    GoodPeers,
    RawPeer,
    RedisProcess,
    ServerProcess,
    assert_no_case_failed,
    expect_last_word,
    frame_code,
    metrics_address,
    wait_for,
    wait_for_metrics,
)

NODE_TTL = 1.0
REAP_INTERVAL = 0.25
# Slack over the computed bound for a loaded 2-core machine.
SLACK = 1.5
CLI_TIMEOUT = 30.0


def start_node(
    serve: Callable[..., ServerProcess],
    redis: RedisProcess | str,
    prefix: str,
    node_id: str,
    *extra: str,
) -> ServerProcess:
    """A server registered in Redis (its first resync done); ``redis`` may be a URL
    (a path to it through a fault proxy)."""
    url = redis if isinstance(redis, str) else redis.url
    server = serve(
        *("--redis", url, "--redis-prefix", prefix, "--node-id", node_id),
        *("--node-ttl", str(NODE_TTL), "--reap-interval", str(REAP_INTERVAL)),
        *extra,
    )
    server.wait_line(r"presence: resync of node")
    return server


def cli(redis: RedisProcess, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HBLOOP, *args, "--redis", redis.url, "--redis-prefix", prefix],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def who(redis: RedisProcess, prefix: str, name: str | None = None) -> list[dict]:
    result = cli(redis, prefix, "who", *([name] if name else []), "--json")
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)["online"]


def members(redis: RedisProcess, prefix: str) -> set[tuple[str, str]]:
    """(name, node label) of every member, read straight from Redis."""
    connection = redis.client()
    try:
        keys = Keys(prefix)
        nodes = [n.decode() for n in connection.execute(("SMEMBERS", keys.nodes))[0]]
        found = set()
        for node in nodes:
            for name in connection.execute(("HKEYS", keys.members(node)))[0]:
                found.add((name.decode(), node.split("@")[0]))
        return found
    finally:
        connection.close()


def events(redis: RedisProcess, prefix: str, after: str = "-") -> list[dict[str, str]]:
    raw = redis.command("XRANGE", Keys(prefix).events, after, "+")
    assert isinstance(raw, list)
    return [
        {"id": entry_id.decode()}
        | {k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2], strict=True)}
        for entry_id, fields in raw
    ]


def index_entry(redis: RedisProcess, prefix: str, key: str) -> list[str]:
    """The index's [node, name] for an identity key; ["", ""] if it has none."""
    raw = redis.command("HGET", Keys(prefix).index, key)
    return ["", ""] if raw is None else json.loads(raw)


def joined(address: tuple[str, int], name: str, interval_ms: int = 0) -> RawPeer:
    peer = RawPeer(address)
    ftype, payload = peer.hello(name, interval_ms)
    assert ftype == FrameType.WELCOME, f"{name}: {payload!r}"
    return peer


def test_joins_and_leaves_are_visible_with_their_reasons(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    server = start_node(serve, redis_server, prefix, "alpha")
    stays = joined(server.address, "sensor-7")
    assert wait_for(lambda: members(redis_server, prefix) == {("sensor-7", "alpha")})

    rows = who(redis_server, prefix, "sensor-7")
    assert len(rows) == 1
    row = rows[0]
    host, port = stays.sock.getsockname()
    assert row["address"] == f"{host}:{port}"
    assert row["node"].startswith("alpha@")
    assert row["node_address"] == f"{server.host}:{server.port}"
    assert row["node_alive"] is True
    assert abs(row["since"] - time.time()) < 10
    table = cli(redis_server, prefix, "who")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "NODE", "ADDRESS", "CONNECTED"]
    assert lines[1].startswith("sensor-7  alpha@") and f"  {host}:{port}  " in lines[1]
    assert lines[1].endswith("s ago)")
    assert lines[-1] == "1 online on 1 node"

    silent = joined(server.address, "sensor-8", interval_ms=100)  # timed out after 0.3 s
    stays.send(encode_close(Code.NORMAL))
    server.wait_line(r"disconnect \S+ name=sensor-8 .*reason=timeout")
    assert wait_for(lambda: not members(redis_server, prefix))
    watched = cli(redis_server, prefix, "watch", "--from", "0", "--count", "4", "--json")
    assert watched.returncode == 0, watched.stderr
    seen = [json.loads(line) for line in watched.stdout.splitlines()]
    assert {(e["event"], e["name"], e.get("reason")) for e in seen} == {
        ("join", "sensor-7", None),
        ("join", "sensor-8", None),
        ("leave", "sensor-7", "peer_closed"),
        ("leave", "sensor-8", "timeout"),
    }
    assert seen[0]["id"] < seen[-1]["id"]
    gone = cli(redis_server, prefix, "who", "sensor-7")
    assert (gone.returncode, gone.stdout.strip()) == (1, "sensor-7 is not online")
    silent.close()
    stays.close()


def test_a_leave_erases_the_index_only_if_it_still_points_to_its_node(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    a = start_node(serve, redis_server, prefix, "a")
    b = start_node(serve, redis_server, prefix, "b")
    on_a = joined(a.address, "phone")
    assert wait_for(lambda: ("phone", "a") in members(redis_server, prefix))
    on_b = joined(b.address, "phone")  # reconnected elsewhere before the old one left
    assert wait_for(lambda: index_entry(redis_server, prefix, "phone")[0].startswith("b@"))
    on_a.send(encode_close(Code.NORMAL))
    assert wait_for(lambda: members(redis_server, prefix) == {("phone", "b")})
    assert index_entry(redis_server, prefix, "phone")[0].startswith("b@")
    assert [row["node"].split("@")[0] for row in who(redis_server, prefix, "phone")] == ["b"]
    on_b.send(encode_close(Code.NORMAL))
    assert wait_for(lambda: index_entry(redis_server, prefix, "phone") == ["", ""])
    on_a.close()
    on_b.close()


def test_the_members_of_a_killed_node_are_reaped_within_the_bound(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    a = start_node(serve, redis_server, prefix, "a")
    b = start_node(serve, redis_server, prefix, "b")
    peers = [joined(a.address, "on-a")] + [joined(b.address, f"on-b-{i}") for i in range(3)]
    assert wait_for(lambda: len(members(redis_server, prefix)) == 4)
    b.proc.kill()
    killed = time.monotonic()
    bound = NODE_TTL + REAP_INTERVAL * (1 + JITTER)
    assert wait_for(lambda: members(redis_server, prefix) == {("on-a", "a")}, bound + SLACK)
    elapsed = time.monotonic() - killed
    assert elapsed <= bound + SLACK
    lost = [e for e in events(redis_server, prefix) if e.get("reason") == "node_lost"]
    assert sorted(e["name"] for e in lost) == ["on-b-0", "on-b-1", "on-b-2"]
    a.wait_line(r"presence: reaped node b@\w+: its liveness key expired; 3 members removed")
    assert not redis_server.command("SISMEMBER", Keys(prefix).nodes, lost[0]["node"])
    for peer in peers:
        peer.close()


def test_a_redis_outage_leaves_heartbeats_alone_and_ends_in_a_resync(
    serve, own_redis: RedisProcess, good_peers, prefix: str
) -> None:
    server = start_node(serve, own_redis, prefix, "n")
    good: GoodPeers = good_peers(server.address)
    stays = joined(server.address, "stays")
    leaves = joined(server.address, "leaves")
    assert wait_for(lambda: len(members(own_redis, prefix)) == 5)
    before = events(own_redis, prefix)[-1]["id"]

    own_redis.shutdown(save=True)  # its data is back when it restarts
    # The reason is whatever the server meets first: Redis' EOF ("closed by Redis"), or
    # on a busy machine the closed socket under a write of its own ("Broken pipe") or a
    # read ("Connection reset by peer").
    server.wait_line(r"redis: lost the connection to unix://\S+: .*; presence paused")
    leaves.send(encode_close(Code.NORMAL))
    arrives = joined(server.address, "arrives")  # connects while Redis is away
    server.wait_line(r"disconnect \S+ name=leaves .*reason=peer_closed")
    good.assert_served(server)

    own_redis.start()
    back = time.monotonic()
    server.wait_line(r"presence: resync of node n@\w+: 5 members .* \(1 joined, 1 left, 0 lost")
    assert time.monotonic() - back < 5.0, "whole again within 5 s of Redis' return"
    expected = {(name, "n") for name in ("good-0", "good-1", "good-2", "stays", "arrives")}
    assert members(own_redis, prefix) == expected
    after = {(e["event"], e["name"], e.get("reason")) for e in events(own_redis, prefix, before)}
    assert ("leave", "leaves", "peer_closed") in after
    assert ("join", "arrives", None) in after
    good.assert_served(server)
    for peer in (stays, leaves, arrives):
        peer.close()


def test_refuse_keeps_the_first_connection_of_a_name_across_servers(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    a = start_node(serve, redis_server, prefix, "a", "--on-duplicate", "refuse")
    b = start_node(serve, redis_server, prefix, "b", "--on-duplicate", "refuse")
    first = joined(a.address, "cam")
    assert wait_for(lambda: ("cam", "a") in members(redis_server, prefix))
    # Another server: welcomed at once (HELLO never waits for Redis), then refused.
    late = joined(b.address, "cam")
    expect_last_word(late, FrameType.ERROR, Code.NAME_TAKEN)
    b.wait_line(r"presence: closing cam \S+ with NAME_TAKEN: cam is online on node a@")
    # The same server: refused before WELCOME.
    local = RawPeer(a.address)
    ftype, payload = local.hello("cam")
    assert (ftype, frame_code((ftype, payload))) == (FrameType.ERROR, Code.NAME_TAKEN)
    first.send(PING_FRAME)
    assert first.recv()[0] == FrameType.PONG
    assert members(redis_server, prefix) == {("cam", "a")}
    assert not any(e["node"].startswith("b@") for e in events(redis_server, prefix))
    for peer in (first, late, local):
        peer.close()


def test_replace_closes_the_older_connection_which_does_not_reconnect(
    serve, spawn, redis_server: RedisProcess, prefix: str
) -> None:
    a = start_node(serve, redis_server, prefix, "a", "--on-duplicate", "replace")
    b = start_node(serve, redis_server, prefix, "b", "--on-duplicate", "replace")
    older = spawn("client", "-n", "cam", "--port", str(a.port), "--backoff-base", "0.05")
    older.wait_line(r"connected to .* as cam")
    assert wait_for(lambda: ("cam", "a") in members(redis_server, prefix))
    newer = joined(b.address, "cam")
    assert older.wait() == 1
    assert "disconnected: peer_closed TAKEN_OVER" in older.lines()
    assert not older.find("reconnecting")
    assert wait_for(lambda: members(redis_server, prefix) == {("cam", "b")})
    taken = [e for e in events(redis_server, prefix) if e.get("reason") == "taken_over"]
    assert [e["node"].split("@")[0] for e in taken] == ["a"]
    # On one server, the newer connection wins too.
    newest = joined(b.address, "cam")
    expect_last_word(newer, FrameType.CLOSE, Code.TAKEN_OVER)
    newest.send(PING_FRAME)
    assert newest.recv()[0] == FrameType.PONG
    assert wait_for(lambda: members(redis_server, prefix) == {("cam", "b")})
    newest.close()


def test_allow_lists_a_name_once_per_server(serve, redis_server: RedisProcess, prefix: str) -> None:
    a = start_node(serve, redis_server, prefix, "a")
    b = start_node(serve, redis_server, prefix, "b")
    peers = [joined(a.address, "tv"), joined(b.address, "tv"), joined(b.address, "tv")]
    assert wait_for(lambda: members(redis_server, prefix) == {("tv", "a"), ("tv", "b")})
    assert [row["node"].split("@")[0] for row in who(redis_server, prefix, "tv")] == ["a", "b"]
    peers[1].send(encode_close(Code.NORMAL))  # b still has the other one
    b.wait_line(r"disconnect \S+ name=tv .*reason=peer_closed")
    peers[2].send(PING_FRAME)
    assert peers[2].recv()[0] == FrameType.PONG  # a round trip later, nothing was sent
    assert members(redis_server, prefix) == {("tv", "a"), ("tv", "b")}
    for peer in peers:
        peer.close()


@pytest.mark.parametrize("policy", ["refuse", "replace"])
def test_hbloop_check_confirms_the_duplicate_policy(
    serve, redis_server: RedisProcess, prefix: str, policy: str
) -> None:
    server = start_node(serve, redis_server, prefix, "c", "--on-duplicate", policy)
    target = f"{server.host}:{server.port}"
    result = subprocess.run(
        [*HBLOOP, "check", target, "--json", "--max-wait", "0.1", "--duplicates", policy],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    report = json.loads(result.stdout)
    assert_no_case_failed(report, result.stderr)
    assert result.returncode == 0, result.stderr
    by_statement = {case["statement"]: case for case in report["cases"]}
    statement = "P1" if policy == "refuse" else "P2"
    assert by_statement[statement]["result"] == "pass"
    other = "P2" if policy == "refuse" else "P1"
    assert by_statement[other]["result"] == "skip"
    # N3: the policy's look-alike case passes, through Redis' skeleton index; the
    # other policy's is skipped.
    look_alikes = {
        c["title"].split(":")[0]: c["result"] for c in report["cases"] if c["statement"] == "N3"
    }
    assert look_alikes == {policy: "pass", ("replace" if policy == "refuse" else "refuse"): "skip"}


def test_each_worker_is_a_node_and_presence_has_metrics(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    server = serve(
        *("--workers", "2", "--redis", redis_server.url, "--redis-prefix", prefix),
        *("--node-id", "pool", "--metrics-port", "0"),
    )
    nodes = Keys(prefix).nodes
    assert wait_for(lambda: redis_server.command("SCARD", nodes) == 2)
    labels = sorted(n.decode().split("@")[0] for n in redis_server.command("SMEMBERS", nodes))
    assert labels == ["pool/w1", "pool/w2"]
    peer = joined(server.address, "probe")
    address = metrics_address(server)
    scraped = wait_for_metrics(
        address, {"hbloop_presence_redis_up": 2, "hbloop_presence_members": 1}
    )
    assert scraped["hbloop_presence_joins_total"] == 1
    assert scraped["hbloop_presence_redis_backlog"] == 0
    peer.close()


def test_on_duplicate_with_workers_needs_redis_and_says_why() -> None:
    result = subprocess.run(
        [*HBLOOP, "serve", "--port", "0", "--workers", "2", "--on-duplicate", "refuse"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 2  # a usage error
    assert result.stderr == (
        "hbloop: error: --on-duplicate refuse with --workers needs --redis: each worker is a "
        "process of its own that cannot see the names connected to the others\n"
    )


def test_refuse_on_one_server_without_redis(serve) -> None:
    server = serve("--on-duplicate", "refuse")
    server.wait_line(r"duplicates: refuse \(this server's names only\)")
    first = joined(server.address, "solo")
    second = RawPeer(server.address)
    ftype, payload = second.hello("solo")  # refused before WELCOME
    assert (ftype, frame_code((ftype, payload))) == (FrameType.ERROR, Code.NAME_TAKEN)
    first.send(PING_FRAME)
    assert first.recv()[0] == FrameType.PONG
    first.send(encode_close(Code.NORMAL))
    first.recv_until_eof()
    again = joined(server.address, "solo")  # free once its holder has left
    for peer in (first, second, again):
        peer.close()


def test_replace_on_one_server_without_redis(serve) -> None:
    server = serve("--on-duplicate", "replace")
    older = joined(server.address, "solo")
    newer = joined(server.address, "solo")
    expect_last_word(older, FrameType.CLOSE, Code.TAKEN_OVER)
    newer.send(PING_FRAME)
    assert newer.recv()[0] == FrameType.PONG
    newest = joined(server.address, "solo")
    expect_last_word(newer, FrameType.CLOSE, Code.TAKEN_OVER)
    for peer in (older, newer, newest):
        peer.close()


def test_watch_says_so_when_events_it_asked_for_were_trimmed(
    serve, spawn, redis_server: RedisProcess, prefix: str
) -> None:
    server = start_node(serve, redis_server, prefix, "n", "--stream-retention", "0.5")
    peers = [joined(server.address, "early-1"), joined(server.address, "early-2")]
    assert wait_for(lambda: len(events(redis_server, prefix)) == 2)
    seen, missed = (e["id"] for e in events(redis_server, prefix))

    def churn() -> None:  # a connect and a close: two events
        joined(server.address, "churn").send(encode_close(Code.NORMAL))

    def churned_past() -> bool:
        churn()
        return events(redis_server, prefix)[0]["id"] > missed

    assert wait_for(churned_past, step=0.1)
    resumed = cli(redis_server, prefix, "watch", "--from", seen, "--count", "1")
    assert resumed.returncode == 1
    assert f"watch: events after {seen} were already trimmed from the stream" in resumed.stderr
    # From the start is never "trimmed". The 0.5 s retention may have emptied the
    # stream before the watch reads it, and then it waits for the next event: churn
    # until it has one (it waited for the early peers' timeout, 29 s, before).
    replayed = spawn(
        *("watch", "--from", "0", "--count", "1"),
        *("--redis", redis_server.url, "--redis-prefix", prefix),
    )
    assert wait_for(lambda: churn() or replayed.proc.poll() is not None, step=0.1)
    assert replayed.wait() == 0, replayed.lines()
    assert len(replayed.lines("stdout")) == 1
    bogus = cli(redis_server, prefix, "watch", "--from", "yesterday")
    assert (bogus.returncode, bogus.stderr) == (
        2,
        "hbloop: error: --from 'yesterday' is not a stream id: MS or MS-SEQ\n",
    )
    for peer in peers:
        peer.close()


def test_who_and_watch_print_names_that_cannot_forge_a_column_or_a_field(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    server = start_node(serve, redis_server, prefix, "quoted")
    # No spaces since names follow PRECIS (protocol.md N1), but quotes and '=' still
    # pass: bare, this name would read as a node column and a reason field.
    forger = 'bob"quoted@0"reason="x"'
    shown = r'"bob\"quoted@0\"reason=\"x\""'
    peer = joined(server.address, forger)
    assert wait_for(lambda: (forger, "quoted") in members(redis_server, prefix))
    listed = cli(redis_server, prefix, "who")
    row = next(line for line in listed.stdout.splitlines() if line.startswith('"'))
    assert row.startswith(f"{shown}  quoted@")
    watched = cli(redis_server, prefix, "watch", "--from", "0", "--count", "1")
    assert watched.returncode == 0, watched.stderr
    assert f" join   {shown}  node=quoted@" in watched.stdout
    as_json = cli(redis_server, prefix, "watch", "--from", "0", "--count", "1", "--json")
    assert json.loads(as_json.stdout)["name"] == forger
    peer.close()


# Look-alikes of "bob" that PRECIS admits (N1, N2) and the skeleton makes one identity
# (N3): Cyrillic o (U+043E), and Greek omicron (U+03BF).
BOB = "bob"
CYRILLIC_BOB = "b\u043eb"
GREEK_BOB = "b\u03bfb"


def test_n3_refuse_on_one_server_treats_a_look_alike_as_the_name(serve) -> None:
    server = serve("--on-duplicate", "refuse")
    holder = joined(server.address, BOB)
    impostor = RawPeer(server.address)
    refusal = impostor.hello(CYRILLIC_BOB)
    assert (refusal[0], frame_code(refusal)) == (FrameType.ERROR, Code.NAME_TAKEN)
    assert b"looks like bob, which is already connected" in refusal[1]
    holder.send(PING_FRAME)
    assert holder.recv()[0] == FrameType.PONG
    for peer in (holder, impostor):
        peer.close()


def test_n3_replace_on_one_server_closes_the_look_alike(serve) -> None:
    server = serve("--on-duplicate", "replace")
    older = joined(server.address, BOB)
    newer = joined(server.address, GREEK_BOB)
    expect_last_word(older, FrameType.CLOSE, Code.TAKEN_OVER)
    newer.send(PING_FRAME)
    assert newer.recv()[0] == FrameType.PONG
    for peer in (older, newer):
        peer.close()


def test_n3_refuse_across_servers_compares_skeletons_and_who_shows_the_name_as_sent(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    a = start_node(serve, redis_server, prefix, "a", "--on-duplicate", "refuse")
    b = start_node(serve, redis_server, prefix, "b", "--on-duplicate", "refuse")
    holder = joined(a.address, CYRILLIC_BOB)
    assert wait_for(lambda: (CYRILLIC_BOB, "a") in members(redis_server, prefix))
    assert index_entry(redis_server, prefix, skeleton(BOB))[1] == CYRILLIC_BOB
    impostor = joined(b.address, BOB)  # welcomed, then refused when Redis answers
    expect_last_word(impostor, FrameType.ERROR, Code.NAME_TAKEN)
    assert [row["name"] for row in who(redis_server, prefix)] == [CYRILLIC_BOB]
    assert members(redis_server, prefix) == {(CYRILLIC_BOB, "a")}
    for peer in (holder, impostor):
        peer.close()


def test_n3_replace_across_servers_takes_the_identity_over_from_a_look_alike(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    a = start_node(serve, redis_server, prefix, "a", "--on-duplicate", "replace")
    b = start_node(serve, redis_server, prefix, "b", "--on-duplicate", "replace")
    older = joined(a.address, BOB)
    assert wait_for(lambda: (BOB, "a") in members(redis_server, prefix))
    newer = joined(b.address, CYRILLIC_BOB)
    expect_last_word(older, FrameType.CLOSE, Code.TAKEN_OVER)
    assert wait_for(lambda: members(redis_server, prefix) == {(CYRILLIC_BOB, "b")})
    # On one server: the look-alike's join removes the name it replaced from Redis.
    newest = joined(b.address, GREEK_BOB)
    expect_last_word(newer, FrameType.CLOSE, Code.TAKEN_OVER)
    assert wait_for(lambda: members(redis_server, prefix) == {(GREEK_BOB, "b")})
    assert index_entry(redis_server, prefix, skeleton(BOB))[1] == GREEK_BOB
    assert [row["name"] for row in who(redis_server, prefix)] == [GREEK_BOB]
    left = [e["name"] for e in events(redis_server, prefix) if e.get("reason") == "taken_over"]
    assert left == [BOB, CYRILLIC_BOB]
    for peer in (older, newer, newest):
        peer.close()
