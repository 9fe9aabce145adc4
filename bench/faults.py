"""``python -m bench --redis --faults``: presence through the faults of issue 17.

Against a redis-server of its own, each case with two presence nodes (``hbloop serve``
processes, or two ``--workers``), measuring what a user would see:

1. **Redis stopped** (SIGSTOP) for ``stop`` seconds, longer than the node TTL, while
   both nodes keep their members: the leave events of members that never left
   (target: 0).
2. **A partition**: node A reaches Redis through a ``FaultProxy`` that goes silent for
   ``partition`` seconds; B welcomes an impostor of one of A's names meanwhile
   (``--on-duplicate refuse``). Figures: how many of A's live members Redis (so
   ``hbloop who``) missed and for how long, how long after the heal they were all
   back (target: 2 s), how long the name was held twice, and who kept it (target:
   the genuine, earlier, connection).
3. **A worker killed**: ``--workers 2 --on-duplicate refuse``; one worker gets
   SIGKILL, and its clients reconnect at once, again and again until admitted: the
   NAME_TAKEN refusals and the last one's time after the kill (target: none after 1 s).
4. **A takeover fight** (``--on-duplicate replace``): two clients that ignore
   TAKEN_OVER take a name from each other for ``fight`` seconds: stream events per
   second after the first 10 s (target: under 20).

The defaults are the issue's (a 15 s stop, a 20 s partition), with the servers' own
defaults (a 10 s node TTL); the tests run the same functions with short ones.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.config import (
    DEFAULT_FAULT_FIGHT,
    DEFAULT_FAULT_PARTITION,
    DEFAULT_FAULT_STOP,
    FIGHT_SETTLE,
)
from bench.faultproxy import FaultProxy
from bench.presence import _wait
from bench.redis_server import RedisProcess
from hbloop.core.protocol import FrameDecoder
from hbloop.core.wire import DEFAULT_MAX_PAYLOAD, Code, FrameType, encode_hello
from hbloop.presence.node import DEFAULT_NODE_TTL, DEFAULT_REAP_INTERVAL, JITTER, Policy
from hbloop.presence.scripts import Keys

# Members per node: enough that a partial loss shows, few enough for a 2-core machine.
MEMBERS = 50


TARGETS = {
    "false_leaves": 0,
    "back_after_heal_s": 2.0,
    "name_taken_after_crash_s": 1.0,
    "fight_events_per_s": 20.0,
}

# Polling Redis: fine enough for figures given in tenths of seconds.
POLL_STEP = 0.02
SOCKET_TIMEOUT = 10.0
START_TIMEOUT = 30.0
CASE_TIMEOUT = 120.0  # a case's reconnects, as bench.presence's phases

# The members never PING: a timeout longer than any case.
SILENT = ("--timeout", "600", "--interval", "60")


@dataclass
class FaultFigures:
    node_ttl: float = DEFAULT_NODE_TTL
    stop_s: float = DEFAULT_FAULT_STOP
    partition_s: float = DEFAULT_FAULT_PARTITION
    fight_s: float = DEFAULT_FAULT_FIGHT
    false_leaves: int | None = None  # case 1
    false_joins: int | None = None
    missing_members_max: int | None = None  # case 2: of A's live members, in Redis
    missing_for_s: float | None = None
    back_after_heal_s: float | None = None
    held_twice_s: float | None = None
    kept_by_genuine: bool | None = None
    name_taken_after_crash: int | None = None  # case 3: refusals after the kill
    name_taken_after_crash_s: float | None = None  # the last one's time after it
    fight_events_per_s: float | None = None  # case 4
    fight_events: int | None = None

    def met(self) -> dict[str, bool | None]:
        got: dict[str, Any] = asdict(self)
        return {k: None if got[k] is None else got[k] <= t for k, t in TARGETS.items()}


# --- processes and peers ----------------------------------------------------------------


class Node:
    """``hbloop serve --redis`` (with ``--workers``, its supervisor)."""

    def __init__(self, url: str, prefix: str, label: str, *extra: str) -> None:
        argv = [sys.executable, "-m", "hbloop", "serve", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--redis", url, "--redis-prefix", prefix, "--node-id", label, *SILENT, *extra]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.address = ("127.0.0.1", self._port())

    def _port(self) -> int:
        """The port a worker (or the server itself) listens on."""
        deadline = time.monotonic() + START_TIMEOUT
        proc = psutil.Process(self.process.pid)
        while time.monotonic() < deadline:
            for each in (proc, *proc.children()):
                for conn in each.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN:
                        return int(conn.laddr.port)
            time.sleep(POLL_STEP)
        raise RuntimeError("hbloop serve did not listen in time")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(SOCKET_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Peer:
    """A raw client that said HELLO and was welcomed."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.name = name
        self.sock = socket.create_connection(address, SOCKET_TIMEOUT)
        self.sock.sendall(encode_hello(name, 0))
        self.decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
        frame = self.next_frame()
        if frame is None or frame[0] != FrameType.WELCOME:
            self.sock.close()
            raise ConnectionError(f"{name}: not welcomed: {frame}")

    def next_frame(self, timeout: float = SOCKET_TIMEOUT) -> tuple[int, bytes] | None:
        """The next frame, or None at EOF (or a reset)."""
        self.sock.settimeout(timeout)
        frames: list[tuple[int, bytes]] = []
        while not frames:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            frames = list(self.decoder.feed(data))
        return frames[0]

    def pending(self) -> bool:
        """The server sent something (or closed)."""
        self.sock.settimeout(0)
        try:
            self.sock.recv(1, socket.MSG_PEEK)  # b"" at EOF
        except BlockingIOError:
            return False
        except OSError:
            pass  # a reset
        return True

    def close(self) -> None:
        self.sock.close()


def _code(frame: tuple[int, bytes] | None) -> int | None:
    return None if frame is None or len(frame[1]) < 2 else int.from_bytes(frame[1][:2], "big")


class Cluster:
    """What a case reads of Redis."""

    def __init__(self, redis: RedisProcess, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)

    def members(self, label: str) -> set[str]:
        """The names Redis lists on the node started as ``label``."""
        found: set[str] = set()
        for node in self.redis.command("SMEMBERS", self.keys.nodes):
            if node.decode().startswith(f"{label}@"):
                names = self.redis.command("HKEYS", self.keys.members(node.decode()))
                found |= {n.decode() for n in names}
        return found

    def events(self, after: str = "-") -> list[dict[str, str]]:
        raw = self.redis.command("XRANGE", self.keys.events, after, "+")
        return [
            {"id": i.decode()}
            | {k.decode(): v.decode() for k, v in zip(f[::2], f[1::2], strict=True)}
            for i, f in raw
        ]

    def owner(self, name: str) -> str | None:
        """The node holding ``name`` (by its key: the cases run refuse or replace)."""
        entry = self.redis.command("HGET", self.keys.index, Policy.REFUSE.key(name))
        return None if entry is None else str(json.loads(entry)[0])


@contextmanager
def _nodes(*nodes: Node) -> Iterator[None]:
    try:
        yield
    finally:
        for node in nodes:
            node.stop()


# --- the cases ------------------------------------------------------------------------------


def redis_stop(redis: RedisProcess, figures: FaultFigures, ttl: tuple[str, ...]) -> None:
    prefix = "faults-stop:"
    a, b = Node(redis.url, prefix, "a", *ttl), Node(redis.url, prefix, "b", *ttl)
    with _nodes(a, b):
        cluster = Cluster(redis, prefix)
        peers = [Peer(a.address, f"a-{i}") for i in range(MEMBERS)]
        peers += [Peer(b.address, f"b-{i}") for i in range(MEMBERS)]
        _wait(lambda: len(cluster.members("a") | cluster.members("b")) == 2 * MEMBERS, "joins")
        before = cluster.events()[-1]["id"]
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        time.sleep(figures.stop_s)
        redis.process.send_signal(signal.SIGCONT)
        # Every reaper has had its chance: two TTLs and a reap interval of each node.
        time.sleep(2 * figures.node_ttl + 2 * DEFAULT_REAP_INTERVAL * (1 + JITTER))
        after = cluster.events(f"({before}")
        figures.false_leaves = sum(e["event"] == "leave" for e in after)
        figures.false_joins = sum(e["event"] == "join" for e in after)
        for peer in peers:
            peer.close()


def partition(redis: RedisProcess, figures: FaultFigures, ttl: tuple[str, ...]) -> None:
    prefix = "faults-partition:"
    proxy = FaultProxy(str(redis.socket_path))
    refuse = ("--on-duplicate", "refuse", *ttl)
    a, b = Node(proxy.url, prefix, "a", *refuse), Node(redis.url, prefix, "b", *refuse)
    with _nodes(a, b):
        cluster = Cluster(redis, prefix)
        names = {f"a-{i}" for i in range(MEMBERS)}
        peers = {name: Peer(a.address, name) for name in sorted(names)}
        _wait(lambda: cluster.members("a") == names, "A's joins")
        proxy.blackhole()
        cut = time.monotonic()
        worst = 0
        _wait(lambda: cluster.members("a") != names, "B reaps A")
        missing_since = time.monotonic()
        _wait(lambda: cluster.owner("a-7") is None, "a-7 free")
        impostor = Peer(b.address, "a-7")  # B cannot know a-7 is connected to A
        _wait(lambda: cluster.owner("a-7") is not None, "the impostor's join")
        twice_since = time.monotonic()
        while time.monotonic() - cut < figures.partition_s:
            worst = max(worst, len(names - cluster.members("a")))
            time.sleep(POLL_STEP)
        proxy.heal()
        healed = time.monotonic()
        held_twice = None

        def back() -> bool:
            nonlocal held_twice
            if held_twice is None and impostor.pending():
                held_twice = time.monotonic() - twice_since
            return cluster.members("a") == names

        _wait(back, "A's members back")
        figures.back_after_heal_s = time.monotonic() - healed
        figures.missing_for_s = time.monotonic() - missing_since
        figures.missing_members_max = worst
        frame = impostor.next_frame()
        if held_twice is None:
            held_twice = time.monotonic() - twice_since
        figures.held_twice_s = held_twice
        owner = cluster.owner("a-7") or ""
        figures.kept_by_genuine = (
            _code(frame) == Code.NAME_TAKEN
            and not peers["a-7"].pending()
            and owner.startswith("a@")
        )
        for peer in (*peers.values(), impostor):
            peer.close()
    proxy.close()


def worker_crash(redis: RedisProcess, figures: FaultFigures) -> None:
    prefix = "faults-crash:"
    pool = Node(redis.url, prefix, "pool", "--workers", "2", "--on-duplicate", "refuse")
    with _nodes(pool):
        cluster = Cluster(redis, prefix)
        _wait(lambda: redis.command("SCARD", cluster.keys.nodes) == 2, "both workers")
        peers = [Peer(pool.address, f"p-{i}") for i in range(2 * MEMBERS)]
        _wait(
            lambda: len(cluster.members("pool/w1") | cluster.members("pool/w2")) == 2 * MEMBERS,
            "joins",
        )
        victims = sorted(cluster.members("pool/w1"))
        dead = next(
            n.decode()
            for n in redis.command("SMEMBERS", cluster.keys.nodes)
            if n.decode().startswith("pool/w1@")
        )
        pid = json.loads(redis.command("GET", cluster.keys.node(dead)))["pid"]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        refused: list[float] = []
        back = [_admitted(pool.address, name, cluster, dead, refused) for name in victims]
        figures.name_taken_after_crash = len(refused)
        figures.name_taken_after_crash_s = max((t - killed for t in refused), default=0.0)
        for peer in (*peers, *back):
            peer.close()


def _admitted(
    address: tuple[str, int], name: str, cluster: Cluster, dead: str, refused: list[float]
) -> Peer:
    """Reconnect as ``name`` until a live node holds it; the time of each NAME_TAKEN."""
    deadline = time.monotonic() + CASE_TIMEOUT
    while time.monotonic() < deadline:
        try:
            peer = Peer(address, name)
        except (ConnectionError, EOFError):
            continue  # queued on the killed worker's listener: reset

        def listed() -> bool:
            owner = cluster.owner(name)
            return owner is not None and owner != dead

        def answered(peer: Peer = peer) -> bool:
            return peer.pending() or listed()

        _wait(answered, f"{name}: a verdict")
        if listed():
            return peer
        if _code(peer.next_frame()) == Code.NAME_TAKEN:
            refused.append(time.monotonic())
        peer.close()
    raise RuntimeError(f"{name} never admitted after the crash")


class Fighter:
    """A client that ignores TAKEN_OVER: it reconnects as ``name`` the moment it is
    closed, until stopped."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.address, self.name = address, name
        self.connects = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                peer = Peer(self.address, self.name)
            except ConnectionError:
                continue  # refused (the back-off): at once again
            self.connects += 1
            while not self.stopped.is_set() and not peer.pending():
                time.sleep(POLL_STEP)
            peer.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(SOCKET_TIMEOUT)


def fight(redis: RedisProcess, figures: FaultFigures, ttl: tuple[str, ...]) -> None:
    prefix = "faults-fight:"
    replace = ("--on-duplicate", "replace", *ttl)
    a, b = Node(redis.url, prefix, "a", *replace), Node(redis.url, prefix, "b", *replace)
    with _nodes(a, b):
        cluster = Cluster(redis, prefix)
        started = time.time()
        fighters = [Fighter(a.address, "cam"), Fighter(b.address, "cam")]
        time.sleep(figures.fight_s)
        for fighter in fighters:
            fighter.stop()
        settled = started + FIGHT_SETTLE
        events = cluster.events()
        late = [e for e in events if int(e["id"].split("-")[0]) / 1000 >= settled]
        figures.fight_events = len(events)
        figures.fight_events_per_s = len(late) / max(figures.fight_s - FIGHT_SETTLE, POLL_STEP)


# --- the whole --------------------------------------------------------------------------


def measure(figures: FaultFigures) -> FaultFigures:
    ttl = ("--node-ttl", str(figures.node_ttl))
    directory = Path(tempfile.mkdtemp(prefix="hbloop-faults-"))
    redis = RedisProcess(directory)
    try:
        print(f"[faults] 1. Redis stopped {figures.stop_s:g}s", flush=True)
        redis_stop(redis, figures, ttl)
        print(f"[faults] 2. a node cut off from Redis {figures.partition_s:g}s", flush=True)
        partition(redis, figures, ttl)
        print("[faults] 3. SIGKILL of one of --workers 2 under refuse", flush=True)
        worker_crash(redis, figures)
        print(f"[faults] 4. a takeover fight of {figures.fight_s:g}s", flush=True)
        fight(redis, figures, ttl)
    finally:
        redis.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return figures


def summary(f: FaultFigures) -> str:
    met = {k: "?" if v is None else ("met" if v else "MISSED") for k, v in f.met().items()}
    return "\n".join(
        [
            "",
            f"presence under faults (node TTL {f.node_ttl:g}s, {MEMBERS} members a node)",
            f"  Redis stopped {f.stop_s:g}s:   {f.false_leaves} false leave events, "
            f"{f.false_joins} joins (target 0: {met['false_leaves']})",
            f"  node cut off {f.partition_s:g}s:    up to {f.missing_members_max} live "
            f"members missing from `who` for {f.missing_for_s:.2f}s, all back "
            f"{f.back_after_heal_s:.2f}s after the heal (target 2s: "
            f"{met['back_after_heal_s']}); a name held twice for {f.held_twice_s:.2f}s, "
            f"kept by the genuine holder: {f.kept_by_genuine}",
            f"  worker SIGKILL:      {f.name_taken_after_crash} NAME_TAKEN after it, the "
            f"last at +{f.name_taken_after_crash_s:.2f}s (target 1s: "
            f"{met['name_taken_after_crash_s']})",
            f"  takeover fight {f.fight_s:g}s:  {f.fight_events_per_s:.1f} events/s after "
            f"{FIGHT_SETTLE:g}s, {f.fight_events} in all (target 20: "
            f"{met['fight_events_per_s']})",
        ]
    )


def main(args: Any) -> int:
    figures = measure(
        FaultFigures(
            node_ttl=args.node_ttl,
            stop_s=args.fault_stop,
            partition_s=args.fault_partition,
            fight_s=args.fault_fight,
        )
    )
    print(summary(figures))
    if args.json is not None:
        document = {"faults": {**asdict(figures), "met": figures.met()}}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(v is not False for v in figures.met().values()) else 1
