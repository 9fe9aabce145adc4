"""The presence model in this process, on a real loop against a real Redis: the paths
that server processes cannot be steered into (a full backlog, an expired liveness key,
a resync that settles a conflict)."""

from __future__ import annotations

import json
import math
import signal
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from bench.redis_server import RedisProcess
from hbloop.core.wire import Code
from hbloop.net.loop import EventLoop
from hbloop.presence.node import (
    LEAVE_BATCH,
    REFRESHES_PER_TTL,
    Member,
    Node,
    Policy,
    Presence,
    PresenceConfig,
    State,
)
from hbloop.presence.redis_link import MAX_IN_FLIGHT
from hbloop.presence.scripts import REAP, Keys

from conftest import wait_for
from test_presence import events

TIMEOUT = 10.0


class Cluster:
    """Presence nodes on one loop."""

    def __init__(self, redis: RedisProcess, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.loop = EventLoop()
        self.nodes: list[Presence] = []
        self.evicted: list[tuple[str, Code]] = []

    def node(self, label: str, policy: Policy = Policy.ALLOW, **config: float) -> Presence:
        config = {"resync_spread": 0.1, **config}
        settings = PresenceConfig(policy=policy, prefix=self.prefix, **config)
        presence = Presence(
            self.loop, self.redis.address, Node.make(label, "127.0.0.1:1"), settings
        )
        presence.start()
        self.nodes.append(presence)
        self.run_until(lambda: presence.counts["resyncs"] >= 1)
        return presence

    def join(self, presence: Presence, name: str, since: float | None = None) -> Member:
        def evict(code: Code, message: str) -> None:
            self.evicted.append((name, code))
            presence.left(member, "closed_locally")

        member = presence.joined(name, "127.0.0.1:9", since or time.time(), evict)
        return member

    def members(self, presence: Presence) -> set[str]:
        names = self.redis.command("HKEYS", Keys(self.prefix).members(presence.node.id))
        assert isinstance(names, list)
        return {name.decode() for name in names}

    def run_until(self, condition, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
        assert self.loop.run_until(condition, timeout), "condition not met in time"

    def close(self) -> None:
        for presence in self.nodes:
            presence.close()
        self.loop.close()


@pytest.fixture
def cluster(redis_server: RedisProcess, prefix: str) -> Iterator[Cluster]:
    made = Cluster(redis_server, prefix)
    yield made
    made.close()


@pytest.fixture
def own_cluster(own_redis: RedisProcess, prefix: str) -> Iterator[Cluster]:
    made = Cluster(own_redis, prefix)
    yield made
    made.close()


def test_a_full_backlog_keeps_updates_here_and_resyncs_them(own_cluster: Cluster) -> None:
    node = own_cluster.node("n")
    node.link.max_pending = 2
    redis = own_cluster.redis
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)  # answers stop; the backlog fills
    try:
        members = [own_cluster.join(node, f"m{i}") for i in range(5)]
        node.left(members[0], "peer_closed")
        assert node.counts["overflows"] >= 1
    finally:
        redis.process.send_signal(signal.SIGCONT)
    own_cluster.run_until(lambda: all(m.state is State.ONLINE for m in members[1:]))
    assert own_cluster.members(node) == {"m1", "m2", "m3", "m4"}
    assert node.counts["resyncs"] == 2


def test_an_expired_liveness_key_is_noticed_and_repaired(cluster: Cluster) -> None:
    node = cluster.node("n", node_ttl=0.6)
    member = cluster.join(node, "x")
    cluster.run_until(lambda: member.state is State.ONLINE)
    keys = Keys(cluster.prefix)
    # As the reaper does for a node it believes dead:
    cluster.redis.command("DEL", keys.node(node.node.id), keys.members(node.node.id))
    cluster.run_until(lambda: node.counts["lapses"] == 1 and cluster.members(node) == {"x"})
    assert cluster.redis.command("EXISTS", keys.node(node.node.id)) == 1


def test_a_resync_under_replace_keeps_the_later_connection(cluster: Cluster) -> None:
    a = cluster.node("a", Policy.REPLACE)
    b = cluster.node("b", Policy.REPLACE)
    held = cluster.join(a, "cam", since=time.time() - 60)
    cluster.run_until(lambda: held.state is State.ONLINE)
    # b connected later but Redis has not heard of it (as during an outage):
    b._synced = False
    later = cluster.join(b, "cam")
    older = cluster.join(b, "old", since=time.time() - 120)
    b._resync()
    cluster.run_until(
        lambda: later.state is State.ONLINE and ("cam", Code.TAKEN_OVER) in cluster.evicted
    )
    assert cluster.members(a) == set()
    assert cluster.members(b) == {"cam", "old"}
    assert older.state is State.ONLINE


def test_a_resync_under_refuse_yields_to_the_holder(cluster: Cluster) -> None:
    a = cluster.node("a", Policy.REFUSE)
    b = cluster.node("b", Policy.REFUSE)
    held = cluster.join(a, "cam")
    cluster.run_until(lambda: held.state is State.ONLINE)
    b._synced = False
    cluster.join(b, "cam")
    b._resync()
    cluster.run_until(lambda: ("cam", Code.NAME_TAKEN) in cluster.evicted)
    assert cluster.members(a) == {"cam"} and cluster.members(b) == set()
    assert b.counts["refusals"] == 1


def test_a_failing_script_writes_nothing_and_the_node_repairs(cluster: Cluster) -> None:
    node = cluster.node("n")
    keys = Keys(cluster.prefix)
    redis = cluster.redis
    redis.command("SET", keys.events, "not a stream")  # the join's XADD would fail
    member = cluster.join(node, "x")
    cluster.run_until(lambda: member.state is State.LOCAL)
    # Checked before the first write: neither the member nor its index entry exists.
    assert cluster.members(node) == set()
    assert redis.command("HGET", keys.index, "x") is None
    redis.command("DEL", keys.events)
    cluster.run_until(lambda: member.state is State.ONLINE)  # the resync it asked for
    assert cluster.members(node) == {"x"}
    assert json.loads(redis.command("HGET", keys.index, "x")) == [node.node.id, "x"]


def test_a_node_resyncs_at_once_when_it_finds_itself_reaped(cluster: Cluster) -> None:
    node = cluster.node("n", node_ttl=0.6)
    member = cluster.join(node, "x")
    cluster.run_until(lambda: member.state is State.ONLINE)
    keys = Keys(cluster.prefix)
    # As a reaper does with a node cut off from Redis for a TTL:
    cluster.redis.command("SREM", keys.nodes, node.node.id)
    cluster.redis.command("DEL", keys.node(node.node.id), keys.members(node.node.id))
    later = cluster.join(node, "y")  # its join finds the node unregistered: no write
    cluster.run_until(lambda: later.state is State.ONLINE and member.state is State.ONLINE)
    assert cluster.members(node) == {"x", "y"}
    assert cluster.redis.command("SISMEMBER", keys.nodes, node.node.id) == 1


def test_a_renewal_that_ran_ahead_of_a_resync_asks_for_no_second_one(cluster: Cluster) -> None:
    """The renewal is written ahead of queued commands, so it may run in Redis before a
    resync sent earlier and find the node unregistered. The resync, answered after it,
    registers the node: another would only carry again the joins then on their way,
    which under refuse it took for a partition's (a busy machine's test runs)."""
    node = cluster.node("n", resync_spread=0.0)  # a second resync would go at once
    keys = Keys(cluster.prefix)
    cluster.redis.command("SREM", keys.nodes, node.node.id)
    cluster.redis.command("DEL", keys.node(node.node.id))
    before = node.counts["resyncs"]
    node._resync()  # queued, written when this iteration's ready callbacks run
    node._heartbeat()  # written now, ahead of it: it finds the node unregistered
    cluster.run_until(lambda: node.counts["resyncs"] == before + 1)
    cluster.run_until(lambda: not node.link.backlog)
    assert node.counts["resyncs"] == before + 1
    assert node.counts["lapses"] == 0
    assert cluster.redis.command("SISMEMBER", keys.nodes, node.node.id) == 1


def test_a_reap_trims_the_oldest_events_past_the_cap_then_the_retention(
    cluster: Cluster,
) -> None:
    """At most a batch a run, from the old end, the newest trimmed id kept for watch."""
    node = cluster.node("n")
    members = [cluster.join(node, f"m{i}") for i in range(10)]
    cluster.run_until(lambda: all(m.state is State.ONLINE for m in members))
    keys = Keys(cluster.prefix)
    ids = [e["id"] for e in events(cluster.redis, cluster.prefix)]
    assert len(ids) == 10

    def reap(retention_ms: int, batch: int) -> list[str]:
        cluster.redis.command(
            *("EVALSHA", REAP.sha, 0, cluster.prefix, node.node.id, 60_000),
            *(retention_ms, 4, batch),  # a cap of 4 events
        )
        assert cluster.redis.command("GET", keys.trimmed).decode() == ids[-len(left()) - 1]
        return left()

    def left() -> list[str]:
        return [e["id"] for e in events(cluster.redis, cluster.prefix)]

    day = 24 * 3600 * 1000
    assert reap(day, 3) == ids[3:]  # 6 past the cap, 3 a run
    assert reap(day, 100) == ids[6:]
    newest = int(ids[-1].split("-")[0])

    def redis_ms() -> int:
        seconds, micros = cluster.redis.command("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    assert wait_for(lambda: redis_ms() > newest + 50)
    assert reap(50, 2) == ids[8:]  # all older than the retention: 2 a run
    assert reap(50, 100) == []


# Members of one node that all leave at once, as a mass disconnect queues them (issue
# 20: 200,000 leaves, the lease lost): even in batches, more scripts (157) than the
# link lets in flight.
MASS = 20_000


def test_a_mass_leave_goes_in_batches_behind_the_lease_renewal(cluster: Cluster) -> None:
    """MASS leaves in one iteration go to Redis LEAVE_BATCH a script, and the next
    renewal is written ahead of them: Redis confirms it while most of them still wait,
    well within a renewal period. Each member's leave event keeps its own reason."""
    node = cluster.node("n")
    members = [cluster.join(node, f"m{i}") for i in range(MASS)]
    cluster.run_until(lambda: all(m.state is State.ONLINE for m in members), 120)
    # On a loaded machine the joins take long enough for the node's own timers (a
    # renewal, a reap) to have queued a command or two not yet written.
    queued = node.link.backlog
    for i, member in enumerate(members):
        node.left(member, "timeout" if i % 2 else "peer_closed")
    node._flush_leaves()  # as the end of this iteration does
    assert node.link.backlog == queued + math.ceil(MASS / LEAVE_BATCH)
    before = node.counts["leaves"]
    asked = cluster.loop.time()
    node._heartbeat()
    cluster.run_until(lambda: (node._renewed or 0) >= asked)
    assert node.counts["leaves"] - before <= MAX_IN_FLIGHT * LEAVE_BATCH
    assert cluster.loop.time() - asked < node.config.node_ttl / REFRESHES_PER_TTL
    cluster.run_until(lambda: node.counts["leaves"] - before == MASS, 120)
    assert cluster.members(node) == set()
    reasons = Counter(
        e["reason"] for e in events(cluster.redis, cluster.prefix) if e["event"] == "leave"
    )
    assert reasons == {"timeout": MASS // 2, "peer_closed": MASS // 2}


def test_a_leave_and_a_join_of_one_name_in_one_iteration_keep_their_order(
    cluster: Cluster,
) -> None:
    """The join waits for no iteration's end: the gathered leaves go first."""
    node = cluster.node("n")
    first = cluster.join(node, "x")
    other = cluster.join(node, "y")
    cluster.run_until(lambda: first.state is State.ONLINE and other.state is State.ONLINE)
    node.left(first, "peer_closed")
    node.left(other, "peer_closed")
    again = cluster.join(node, "x")  # the same iteration: no flush has run yet
    cluster.run_until(lambda: again.state is State.ONLINE and not node.link.backlog)
    assert cluster.members(node) == {"x"}
    assert [(e["event"], e["name"]) for e in events(cluster.redis, cluster.prefix)][-3:] == [
        ("leave", "x"),
        ("leave", "y"),
        ("join", "x"),
    ]
