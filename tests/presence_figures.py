"""The presence fault scenarios at full scale, with the default settings (a 10 s node
TTL, a 2 s reaper, the default takeover limits), printing one figure each:

    python tests/presence_figures.py stop        # Redis stopped 15 s: false leave events
    python tests/presence_figures.py partition   # a node cut off 16 s: back in `who` after
    python tests/presence_figures.py fight       # two clients fighting: events/s after 10 s

The tests (tests/test_presence_faults.py) check the same behaviour with short TTLs in
a few seconds; this runs it as the issue saw it, in about a minute each.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.redis_server import RedisProcess
from hbloop.core.wire import PING_FRAME
from hbloop.presence.node import DEFAULT_NODE_TTL, DEFAULT_REAP_INTERVAL

from conftest import ServerProcess, wait_for
from faultproxy import FaultProxy
from test_presence import cli, events, joined
from test_presence_faults import Fighter

PREFIX = "figures:"
STOP = 15.0  # the Redis stop
PARTITION = 16.0  # the silent proxy
FIGHT = 12.0  # the takeover fight; its rate is read over its last 2 s
MEMBERS = 100
# The members are raw peers that never PING: a timeout longer than any scenario.
SILENT_PEERS = ("--timeout", "300")


def node(url: str, label: str, *extra: str) -> ServerProcess:
    server = ServerProcess(
        "--redis", url, "--redis-prefix", PREFIX, "--node-id", label, *SILENT_PEERS, *extra
    )
    server.wait_line(r"presence: resync of node")
    return server


def stop(redis: RedisProcess) -> None:
    a, b = node(redis.url, "a"), node(redis.url, "b")
    peers = [joined(a.address, f"a-{i}") for i in range(MEMBERS)]
    peers += [joined(b.address, f"b-{i}") for i in range(MEMBERS)]
    assert wait_for(lambda: len(events(redis, PREFIX)) == 2 * MEMBERS)
    before = events(redis, PREFIX)[-1]["id"]
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)
    time.sleep(STOP)
    redis.process.send_signal(signal.SIGCONT)
    time.sleep(2 * DEFAULT_NODE_TTL + 2 * DEFAULT_REAP_INTERVAL)  # any reaper has acted
    after = events(redis, PREFIX, f"({before}")
    leaves = sum(e["event"] == "leave" for e in after)
    joins = sum(e["event"] == "join" for e in after)
    print(f"Redis stopped {STOP:g}s: {leaves} leave and {joins} join events of live members")
    for each in peers:
        each.close()
    a.stop()
    b.stop()


def partition(redis: RedisProcess) -> None:
    proxy = FaultProxy(str(redis.socket_path))
    a = node(proxy.url, "a", "--on-duplicate", "refuse")
    b = node(redis.url, "b", "--on-duplicate", "refuse")
    peers = [joined(a.address, f"a-{i}") for i in range(50)]
    proxy.blackhole()
    cut = time.monotonic()
    b.wait_line(r"presence: reaped node a@", timeout=PARTITION)
    impostor = joined(b.address, "a-7")
    time.sleep(max(0.0, PARTITION - (time.monotonic() - cut)))
    proxy.heal()
    healed = time.monotonic()

    def listed() -> bool:
        rows = json.loads(cli(redis, PREFIX, "who", "--json").stdout)["online"]
        return sum(row["node"].startswith("a@") for row in rows) == 50

    assert wait_for(listed, timeout=60.0, step=0.05)
    back = time.monotonic() - healed
    frames = impostor.recv_until_eof()
    peers[7].send(PING_FRAME)
    print(
        f"partition of {PARTITION:g}s: 50 members back in `hbloop who` {back:.2f}s after "
        f"the heal; impostor got {[f for f, _ in frames]}; genuine a-7 answered "
        f"{peers[7].recv()[0]}"
    )
    for each in (*peers, impostor):
        each.close()
    a.stop()
    b.stop()
    proxy.close()


def fight(redis: RedisProcess) -> None:
    a = node(redis.url, "a", "--on-duplicate", "replace")
    b = node(redis.url, "b", "--on-duplicate", "replace")
    fighters = [Fighter(a.address, "cam"), Fighter(b.address, "cam")]
    started = time.time()
    time.sleep(FIGHT)
    for fighter in fighters:
        fighter.stop()
    late = [e for e in events(redis, PREFIX) if int(e["id"].split("-")[0]) / 1000 >= started + 10]
    total = len(events(redis, PREFIX))
    print(
        f"takeover fight of {FIGHT:g}s: {total} events in all, "
        f"{len(late) / (FIGHT - 10):.1f} events/s after 10 s "
        f"({sum(f.connects for f in fighters)} connects)"
    )
    a.stop()
    b.stop()


def main() -> None:
    scenarios = {"stop": stop, "partition": partition, "fight": fight}
    with tempfile.TemporaryDirectory(prefix="hbf-") as directory:
        redis = RedisProcess(Path(directory))
        try:
            scenarios[sys.argv[1]](redis)
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
