"""Presence through the bad days: a node cut off from Redis (a fault proxy between
them), Redis itself stopped or restarted for longer than the node TTL, and two clients
fighting over one name. Real `hbloop serve` processes, a real redis-server.

The servers run with test_presence's 1 s node TTL and 0.25 s reaper, so that what
takes tens of seconds with the defaults takes a few here.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bench import faults
from bench.faultproxy import FaultProxy
from hbloop.core.names import skeleton
from hbloop.core.wire import PING_FRAME, Code, FrameType
from hbloop.presence.scripts import Keys

from conftest import WAIT_TIMEOUT, RawPeer, RedisProcess, frame_code, wait_for
from test_presence import NODE_TTL, REAP_INTERVAL, cli, events, joined, members, start_node

# Members of the partitioned node, as in the report (50 there).
MEMBERS = 20

# How long after the heal a partitioned node's members must be listed again: its
# link notices within a reconnect back-off (at most a third of the TTL), then one
# resync; the rest is slack for a loaded 2-core machine.
HEAL_BOUND = 5.0

# A slow path: every chunk between a node and Redis waits this long (a 0.2 s round
# trip with a 1 s TTL), and the lease must survive this many renewals through it.
SLOW_PATH = NODE_TTL / 10
RENEWALS = 6

# Redis is stopped this long: well past the node TTL (keys expire meanwhile), and
# under the link's 5 s reply timeout, so that every node's queued commands, its
# reaper's included, run the moment Redis continues.
STOP = 2.5 * NODE_TTL

# How long after registering a node's reaper runs: a TTL of Redis' service, then its
# next reap interval.
REAPING_AFTER = NODE_TTL + 2 * REAP_INTERVAL

# The takeover fight: limit, window and first back-off given to the servers, and how
# long the two clients fight.
TAKEOVER_LIMIT = 3
TAKEOVER_WINDOW = 1.0
TAKEOVER_BACKOFF = 0.5
FIGHT = 4.0

# How often a fighter holding the name looks whether it should stop.
FIGHTER_POLL = 0.1


@pytest.fixture
def proxy(redis_server: RedisProcess) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's Redis."""
    made = FaultProxy(str(redis_server.socket_path))
    yield made
    made.close()


def node_of(name: str, on: str) -> Callable[[dict[str, str]], bool]:
    return lambda e: e["name"] == name and e["node"].startswith(f"{on}@")


def error_message(frame: tuple[int, bytes]) -> str:
    return frame[1][2:].decode()


# --- case 1: a partition, healed by the policy's rule ---------------------------------


@pytest.mark.parametrize(
    ("policy", "heal"), [("refuse", "resume"), ("refuse", "reset"), ("replace", "resume")]
)
def test_a_partition_heals_by_the_policy_and_the_members_come_back(
    serve, redis_server: RedisProcess, prefix: str, proxy: FaultProxy, policy: str, heal: str
) -> None:
    a = start_node(serve, proxy.url, prefix, "a", "--on-duplicate", policy)
    b = start_node(serve, redis_server, prefix, "b", "--on-duplicate", policy)
    peers = [joined(a.address, f"a-{i}") for i in range(MEMBERS)]
    everyone = {(f"a-{i}", "a") for i in range(MEMBERS)}
    assert wait_for(lambda: members(redis_server, prefix) == everyone)
    first_since = {e["name"]: e["since"] for e in events(redis_server, prefix)}

    proxy.blackhole()  # A keeps serving; Redis hears nothing from it
    # B cannot tell a partition from a crash: A's lease expires and B reaps it.
    b.wait_line(rf"presence: reaped node a@\w+: its liveness key expired; {MEMBERS} members")
    a.wait_line(r"presence: no renewal of node a@\w+'s lease for")
    impostor = joined(b.address, "a-7")  # B cannot know that a-7 is connected to A
    assert wait_for(lambda: members(redis_server, prefix) == {("a-7", "b")})

    if heal == "reset":
        proxy.reset()  # A's connection dies: it reconnects
    proxy.heal()
    healed = time.monotonic()
    genuine = peers[7]
    if policy == "refuse":  # the earlier connection keeps the name
        keeper, loser, code = "a", "b", Code.NAME_TAKEN
        frames = impostor.recv_until_eof()
        assert [(f, frame_code((f, p))) for f, p in frames] == [(FrameType.ERROR, code)]
        assert "held by an earlier connection" in error_message(frames[0])
        expected = everyone
    else:  # replace: the later connection keeps it
        keeper, loser, code = "b", "a", Code.TAKEN_OVER
        frames = genuine.recv_until_eof()
        assert [(f, frame_code((f, p))) for f, p in frames] == [(FrameType.CLOSE, code)]
        expected = everyone - {("a-7", "a")} | {("a-7", "b")}
    assert wait_for(lambda: members(redis_server, prefix) == expected, HEAL_BOUND)
    back = time.monotonic() - healed
    print(f"figure: {MEMBERS} members of the partitioned node listed {back:.2f}s after the heal")
    assert back < HEAL_BOUND
    listed = cli(redis_server, prefix, "who")
    assert listed.returncode == 0 and listed.stdout.splitlines()[-1].startswith(
        f"{MEMBERS} online on "
    )

    survivor = peers[8] if policy == "replace" else genuine
    survivor.send(PING_FRAME)
    assert survivor.recv()[0] == FrameType.PONG  # never disturbed
    after = events(redis_server, prefix)
    conflicts = [e for e in after if e["event"] == "conflict"]
    assert len(conflicts) == 1, conflicts
    assert conflicts[0]["name"] == "a-7" and conflicts[0]["policy"] == policy
    assert conflicts[0]["kept"].startswith(f"{keeper}@")
    assert conflicts[0]["lost"].startswith(f"{loser}@")
    # Re-registered with their original join times.
    rejoined = [e for e in after if e["event"] == "join" and e["id"] > conflicts[0]["id"]]
    assert {e["name"]: e["since"] for e in rejoined if e["node"].startswith("a@")} == {
        name: since for name, since in first_since.items() if (name, "a") in expected
    }
    a.wait_line(r"presence: Redis confirms node a@\w+'s lease again")
    for peer in (*peers, impostor):
        peer.close()


def test_a_slow_path_to_redis_costs_no_lease(
    serve, redis_server: RedisProcess, prefix: str, proxy: FaultProxy
) -> None:
    proxy.delay(SLOW_PATH)
    a = start_node(serve, proxy.url, prefix, "a")
    b = start_node(serve, redis_server, prefix, "b")
    peer = joined(a.address, "slow")
    assert wait_for(lambda: members(redis_server, prefix) == {("slow", "a")})
    lease = Keys(prefix).node(events(redis_server, prefix)[0]["node"])
    renewals, last = 0, -1

    def renewed() -> bool:  # the key's TTL went up: a renewal came through
        nonlocal renewals, last
        ttl = redis_server.command("PTTL", lease)
        assert isinstance(ttl, int) and ttl > 0, "the lease lapsed"
        renewals += ttl > last >= 0
        last = ttl
        return renewals >= RENEWALS

    assert wait_for(renewed, step=0.02)
    assert not a.find(r"no renewal of node")
    assert not b.find(r"reaped node a@")
    assert members(redis_server, prefix) == {("slow", "a")}
    peer.close()


# --- case 2: Redis stopped or restarted for longer than the TTL --------------------------


@pytest.mark.parametrize("fault", ["stopped", "restarted"])
def test_redis_away_longer_than_the_ttl_costs_no_member(
    serve, own_redis: RedisProcess, prefix: str, fault: str
) -> None:
    a = start_node(serve, own_redis, prefix, "a")
    b = start_node(serve, own_redis, prefix, "b")
    served = time.monotonic()  # both registered: each has been served since before now
    peers = [joined(a.address, f"a-{i}") for i in range(5)]
    peers += [joined(b.address, f"b-{i}") for i in range(5)]
    assert wait_for(lambda: len(members(own_redis, prefix)) == 10)
    before = events(own_redis, prefix)[-1]["id"]
    assert own_redis.process is not None
    # A node reaps only once served for a TTL; past that (and a reap interval), each
    # reaper queues a REAP in the stop's first second, which the held-reap check needs.
    assert wait_for(lambda: time.monotonic() - served > REAPING_AFTER)

    if fault == "stopped":
        own_redis.process.send_signal(signal.SIGSTOP)
        time.sleep(STOP)  # the outage itself: every lease expires meanwhile
        own_redis.process.send_signal(signal.SIGCONT)
    else:
        own_redis.shutdown(save=True)
        time.sleep(STOP)
        own_redis.start()
    for node in (a, b):
        node.wait_line(r"presence: Redis confirms node \S+'s lease again")
    if fault == "stopped":  # the reapers' commands queued during the stop were held
        assert wait_for(lambda: any(n.find(r"Redis ran no presence script for") for n in (a, b)))

    # Reaping works again, and reaps only the dead: kill B.
    b.proc.kill()
    a.wait_line(r"presence: reaped node b@\w+: its liveness key expired; 5 members removed")
    since = events(own_redis, prefix, f"({before}")
    print(
        "figure: leave events of live members after Redis was "
        f"{fault} {STOP:g}s (TTL {NODE_TTL:g}s): "
        f"{sum(1 for e in since if e['event'] == 'leave' and e['node'].startswith('a@'))}"
    )
    assert [e for e in since if e["event"] == "join"] == [], "nobody left, nobody rejoined"
    assert sorted(e["name"] for e in since) == [f"b-{i}" for i in range(5)]
    assert {e["reason"] for e in since} == {"node_lost"}
    assert members(own_redis, prefix) == {(f"a-{i}", "a") for i in range(5)}
    for peer in peers:
        peer.close()


# --- case 4: two clients fighting over one name ------------------------------------------


class Fighter:
    """A hostile client that ignores TAKEN_OVER: it reconnects as ``name`` the moment
    it is closed, until stopped; it keeps the reasons of its ERRORs."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.address = address
        self.name = name
        self.connects = 0
        self.refusals: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            with RawPeer(self.address) as peer:
                self.connects += 1
                frames = [peer.hello(self.name)]
                if frames[0][0] == FrameType.WELCOME:
                    frames = self._until_closed(peer)
                for ftype, payload in frames:
                    if ftype == FrameType.ERROR:
                        self.refusals.append(error_message((ftype, payload)))

    def _until_closed(self, peer: RawPeer) -> list[tuple[int, bytes]]:
        frames = []
        while True:
            try:
                frames.append(peer.recv(FIGHTER_POLL))
            except TimeoutError:
                if self.stopped.is_set():
                    return frames
            except (EOFError, ConnectionResetError):
                return frames

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


def test_a_takeover_fight_is_bounded_by_a_doubling_back_off(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    limits = (
        *("--on-duplicate", "replace", "--takeover-limit", str(TAKEOVER_LIMIT)),
        *("--takeover-window", str(TAKEOVER_WINDOW), "--takeover-backoff", str(TAKEOVER_BACKOFF)),
    )
    a = start_node(serve, redis_server, prefix, "a", *limits)
    b = start_node(serve, redis_server, prefix, "b", *limits)
    fighters = [Fighter(a.address, "cam"), Fighter(b.address, "cam")]
    started = time.monotonic()
    time.sleep(FIGHT)  # the fight lasts this long
    for fighter in fighters:
        fighter.stop()
    elapsed = time.monotonic() - started

    fight = events(redis_server, prefix)
    # The first join; bursts of limit + 1 takeovers (a leave and a join each), each
    # after a back-off of 1, 2, 4, ... times the first, so at most 1 + log2(elapsed /
    # back-off + 1) of them; on a slow machine, up to the limit in each window
    # besides; the holder's leave when the fighters stop.
    bursts = 1 + int(math.log2(elapsed / TAKEOVER_BACKOFF + 1))
    slow = math.ceil(elapsed / TAKEOVER_WINDOW) * TAKEOVER_LIMIT
    bound = 1 + (bursts * (TAKEOVER_LIMIT + 1) + slow) * 2 + 1
    print(
        f"figure: {len(fight)} stream events in a {elapsed:.1f}s takeover fight "
        f"({sum(f.connects for f in fighters)} connects; bound {bound})"
    )
    assert len(fight) <= bound
    assert {e["event"] for e in fight} <= {"join", "leave"}
    refusals = [text for fighter in fighters for text in fighter.refusals]
    assert refusals, "the fight met the back-off"
    assert all(f"taken over more than {TAKEOVER_LIMIT} times" in text for text in refusals)
    storm = rf"presence: takeover storm: cam was taken over more than {TAKEOVER_LIMIT} times"
    assert a.find(storm) or b.find(storm)
    held = redis_server.command("HGET", Keys(prefix).takeovers(skeleton("cam")), "level")
    assert isinstance(held, bytes) and int(held) >= 1, "the back-off doubled"


# --- case 3: a worker killed, its names free at once -----------------------------------

# Names connected to a --workers 2 pool before one worker is killed.
POOL_MEMBERS = 30

# The issue's bound: no NAME_TAKEN later than this after the kill (the supervisor sees
# the exit at once; one script removes the node).
CRASH_BOUND = 1.0


def reconnect_until_admitted(
    address: tuple[str, int], name: str, listed: Callable[[str], bool], refused: list[float]
) -> RawPeer:
    """Connect as ``name`` until Redis lists it on a live node; the time of each
    NAME_TAKEN is added to ``refused``. HELLO never waits for Redis: a connection
    refused is welcomed first, then closed with ERROR NAME_TAKEN. A connection the
    kernel had queued on the killed worker's listener is reset: the client tries again."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        assert time.monotonic() < deadline, f"{name} never admitted"
        try:
            peer = joined(address, name)
        except (ConnectionError, EOFError):
            continue
        assert wait_for(
            lambda sock=peer.sock: bool(select.select([sock], [], [], 0)[0]) or listed(name)
        )
        if listed(name):
            return peer
        frame = peer.recv()
        assert frame_code(frame) == Code.NAME_TAKEN, frame
        refused.append(time.monotonic())
        peer.close()


def test_a_killed_workers_names_are_free_within_a_second(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    # The default node TTL (10 s): without the supervisor, the names stay held that long.
    pool = serve(
        *("--workers", "2", "--redis", redis_server.url, "--redis-prefix", prefix),
        *("--node-id", "pool", "--on-duplicate", "refuse", "--timeout", "300"),
    )
    keys = Keys(prefix)
    assert wait_for(lambda: redis_server.command("SCARD", keys.nodes) == 2)
    peers = [joined(pool.address, f"p-{i}") for i in range(POOL_MEMBERS)]
    assert wait_for(lambda: len(members(redis_server, prefix)) == POOL_MEMBERS)
    victims = sorted(name for name, label in members(redis_server, prefix) if label == "pool/w1")
    assert victims  # SO_REUSEPORT spreads 30 connections over both workers
    dead = next(
        n.decode()
        for n in redis_server.command("SMEMBERS", keys.nodes)
        if n.decode().startswith("pool/w1@")
    )
    pid = json.loads(redis_server.command("GET", keys.node(dead)))["pid"]

    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()

    def listed(name: str) -> bool:  # held by a live node: the other worker, or w1 anew
        owner = redis_server.command("HGET", keys.index, skeleton(name))
        return owner is not None and json.loads(owner)[0] != dead

    refused: list[float] = []
    back = [reconnect_until_admitted(pool.address, name, listed, refused) for name in victims]
    late = [round(at - killed, 2) for at in refused if at - killed > CRASH_BOUND]
    print(
        f"figure: {len(refused)} NAME_TAKEN after the kill, the last at "
        f"+{max(refused, default=killed) - killed:.2f}s"
    )
    assert late == []
    pool.wait_line(
        rf"presence: removed node {re.escape(dead)} of a dead process with its "
        rf"{len(victims)} members \(reason node_lost\)"
    )
    leaves = [e for e in events(redis_server, prefix) if e["event"] == "leave"]
    assert {e["name"] for e in leaves} == set(victims)
    assert {e["reason"] for e in leaves} == {"node_lost"}
    for peer in (*peers, *back):
        peer.close()


def test_a_node_stopped_cleanly_removes_its_members_before_it_exits(
    serve, redis_server: RedisProcess, prefix: str
) -> None:
    # Drained in a second rather than the default ten: the members leave as they close.
    node = start_node(serve, redis_server, prefix, "calm", "--drain-period", "1")
    peers = [joined(node.address, f"c-{i}") for i in range(MEMBERS)]
    assert wait_for(lambda: len(members(redis_server, prefix)) == MEMBERS)
    assert node.terminate() == 0
    keys = Keys(prefix)
    assert members(redis_server, prefix) == set()  # at once: no reaper involved
    assert redis_server.command("SCARD", keys.nodes) == 0
    assert redis_server.command("HLEN", keys.index) == 0
    leaves = [e for e in events(redis_server, prefix) if e["event"] == "leave"]
    assert sorted(e["name"] for e in leaves) == sorted(f"c-{i}" for i in range(MEMBERS))
    assert {e["reason"] for e in leaves} == {"shutdown"}
    for peer in peers:
        peer.close()


# --- python -m bench --redis --faults, short --------------------------------------------


@pytest.mark.slow
def test_the_bench_fault_cases_measure_the_issues_figures(own_redis: RedisProcess) -> None:
    """bench.faults' cases with a 1 s node TTL: the measuring the bench reports."""
    figures = faults.FaultFigures(node_ttl=NODE_TTL, stop_s=STOP, partition_s=3 * NODE_TTL)
    quick = ("--node-ttl", str(NODE_TTL), "--reap-interval", "0.25")
    faults.redis_stop(own_redis, figures, quick)
    faults.partition(own_redis, figures, quick)
    faults.worker_crash(own_redis, figures)
    print({k: v for k, v in vars(figures).items() if v is not None})
    assert figures.false_leaves == 0 and figures.false_joins == 0
    assert figures.missing_members_max == faults.MEMBERS  # B reaped A, as a crash
    assert figures.back_after_heal_s is not None and figures.back_after_heal_s < HEAL_BOUND
    assert figures.kept_by_genuine is True
    assert figures.name_taken_after_crash_s is not None
    assert figures.name_taken_after_crash_s < CRASH_BOUND
