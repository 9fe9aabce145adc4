"""Cluster-wide presence through Redis: who is online, on which node, since when.

A ``Presence`` belongs to one process (one *node*) and runs on its EventLoop beside the
server. The server tells it three things, and nothing else, all synchronously and
without ever waiting for Redis:

* ``check(name)`` when a HELLO arrives: the duplicate policy's verdict on this node
  (a code to refuse with, or None);
* ``joined(name, address, since, evict)`` after WELCOME, returning a ``Member``;
* ``left(member, reason)`` when that connection ends, whatever the reason.

``evict(code, message)`` is how presence ends a connection later, when Redis has the
last word: the name was taken over by a newer connection on another node (CLOSE
TAKEN_OVER), or another node holds it and the policy refuses duplicates (ERROR
NAME_TAKEN).

What reaches Redis is per (name, node): one join when a name comes online on this
node, one leave when its last connection here ends. The node keeps its own table of
members, which is the truth for its part: when Redis is unreachable, or the command
backlog overflows, the table goes on changing locally (with the reasons of the leaves
that Redis has not heard about) and, once Redis can be reached again, one atomic
RESYNC script makes Redis agree with it, after a random delay so that the nodes of a
cluster do not all resync at the same moment.

Conflicts between nodes are settled by the order in which Redis runs their scripts.
Under refuse, the join script turns down a name that another live node holds, and the
node evicts its connection (welcomed already: HELLO never waits) with NAME_TAKEN.
Under replace, the join script removes the name from its holder and publishes it on
the holder's takeover channel. The holder is subscribed on its own connection (RESP3
push), so the notice reaches it in Redis' order among its replies: a member whose join
was answered before the notice is the older one and is closed with TAKEN_OVER; one
whose join is still on its way reached Redis later, is the newer, and stays. A name
taken over more than ``takeover_limit`` times in ``takeover_window`` is refused
(NAME_TAKEN, with the reason) for a back-off that doubles at each new burst, so that
two clients that ignore TAKEN_OVER cannot fight forever.

The node holds a lease in Redis: a key with a TTL, refreshed every third of it, with
jitter. Every node also runs the reaper, which removes the members of nodes that
could have renewed their lease and did not (``presence_scripts`` explains how Redis'
own clock tells a dead node from a Redis outage). A node keeps its own view too: its
reaper waits until it has itself been connected for a full TTL, and it knows when its
own lease lapsed. A node that was cut off that long comes back with one resync that
re-registers its members with their original join times; a name that another node
took meanwhile is settled by the policy's rule (refuse: the earlier connection keeps
it; replace: the later), with a ``conflict`` event naming both nodes.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hbloop.core.logfields import token
from hbloop.core.names import skeleton
from hbloop.core.wire import Code
from hbloop.net.counters import Count, Figures, Gauge, Labelled, LabelledLevel
from hbloop.net.loop import EventLoop, Timer
from hbloop.presence.redis_link import (
    CONNECT_TIMEOUT,
    RECONNECT_CAP,
    BlockingRedis,
    RedisAddress,
    RedisLink,
    RedisUnavailable,
    Reply,
)
from hbloop.presence.scripts import (
    CHECK,
    DEREGISTER,
    HEARTBEAT,
    JOIN,
    LEAVE,
    REAP,
    RESYNC,
    SCRIPTS,
    Keys,
)

log = logging.getLogger("hbloop.presence")

DEFAULT_PREFIX = "hbloop:"

# A node's liveness key lives this long unless refreshed. It bounds how long the
# members of a killed server stay "online": at most NODE_TTL + REAP_INTERVAL x (1 +
# JITTER), 12.4 s with these values, inside the 15 s goal (Phoenix takes about 30 s,
# Ably 60 s, Pusher 75 s).
DEFAULT_NODE_TTL = 10.0

# The key is refreshed every TTL / REFRESHES_PER_TTL: two refreshes may be lost (or
# delayed by a slow Redis) before a live node is taken for dead, the same two-misses
# rule as the heartbeat timeout (protocol.md T2).
REFRESHES_PER_TTL = 3

# How often each node looks for expired nodes to reap. One script of a few EXISTS per
# node every 2 s is nothing for Redis; it adds at most that much to the stale time.
DEFAULT_REAP_INTERVAL = 2.0

# Periodic work is spread by +/- this fraction, so that nodes started together do not
# refresh and reap in lockstep forever.
JITTER = 0.2

# After Redis comes back, each node resyncs after a delay drawn from [0, this], so a
# cluster's rewrites are spread instead of arriving together; with the link's 2 s
# reconnect cap, a node is whole again within about 3 s of Redis' return.
RESYNC_SPREAD = 1.0

# The event stream keeps events this long (the reapers trim older ones, XTRIM
# MINID): a reader that was away for a night resumes from its last-seen id without a
# gap (``hbloop watch --from ID`` says so when it cannot).
DEFAULT_STREAM_RETENTION = 24 * 3600.0

# ... and at most this many, a memory backstop (about 150 bytes an entry: some 150 MB
# of Redis). A day of a 10,000-member fleet reconnecting every 20 minutes fits.
STREAM_MAXLEN = 1_000_000

# A reaper trims at most this many events a run (past the retention or the cap), so
# that one run stays short (about 10 ms of Redis) even when the cap was just lowered;
# at one run every few seconds per node it outpaces any churn the cap is meant for.
TRIM_BATCH = 10_000

# A name taken over more than this many times within the window is refused for a
# back-off. A device that flips between networks takes over its own stale connection
# now and then; ten times a minute is no honest client.
DEFAULT_TAKEOVER_LIMIT = 10
DEFAULT_TAKEOVER_WINDOW = 60.0

# The first back-off (s), doubled at each new burst, at most TAKEOVER_BACKOFF_DOUBLINGS
# times (5 s to 320 s): long enough that a fight costs a few events a minute, short
# enough that a name that changed hands for good is usable again soon.
DEFAULT_TAKEOVER_BACKOFF = 5.0
TAKEOVER_BACKOFF_DOUBLINGS = 6

# The leaves of one loop iteration go to Redis together, at most this many a script:
# a mass disconnect's members then cost Redis one EVALSHA, key check and clock update
# a batch instead of a member. 20,000 leaves took Redis 30.6 us of CPU a member one
# a script, 8.3 in 16s, 7.1 in 128s, 6.7 in 512s (INFO's used_cpu, one run); a script
# of 128 holds Redis up for about a millisecond, a renewal's wait at worst.
LEAVE_BATCH = 128

# How long a stopping node waits for Redis to take its queued updates, then to record
# its departure: a fraction of the server's default shutdown grace (5 s).
DEREGISTER_TIMEOUT = 2.0

# The reason of the leaves of a node that died: the reaper's, and a supervisor's that
# removes a dead worker's node at once (NodeRemover).
NODE_LOST = "node_lost"

# While presence is degraded, one log line every this many seconds sums up the Redis
# commands that failed, instead of a line per command (a node at Redis' maxmemory
# would log dozens a second); the changes of state are logged as they happen.
SUMMARY_INTERVAL = 60.0

# Why presence is degraded: Redis cannot be reached, it refuses writes at maxmemory,
# its ACL denies a command presence needs, or a script failed otherwise.
TROUBLES = ("unreachable", "oom", "noperm", "script_error")

# The server's reason for the peers it closes when it stops. Their leaves are not sent
# one by one: the node's departure removes all its members with this reason at once.
SHUTDOWN_REASON = "shutdown"


class Policy(enum.Enum):
    """What happens when a name that is online connects again."""

    ALLOW = "allow"  # both stay; presence lists the name once per node
    REFUSE = "refuse"  # the newcomer gets ERROR NAME_TAKEN
    REPLACE = "replace"  # the older connection gets CLOSE TAKEN_OVER

    def key(self, name: str) -> str:
        """``name``'s identity under this policy: its confusable skeleton under refuse
        and replace, so that look-alike names are one (protocol.md N3); under allow,
        which compares no names, the name itself."""
        return name if self is Policy.ALLOW else skeleton(name)


def taken_message(name: str, held: str) -> str:
    """NAME_TAKEN's reason for ``name`` when ``held``, the same name or a look-alike (one
    key, Policy.key), is connected to this server."""
    if name == held:
        return f"{token(name)} is already connected"
    return f"{token(name)} looks like {token(held)}, which is already connected"


class State(enum.Enum):
    LOCAL = "local"  # Redis has not been told (unreachable, or not yet resynced)
    PENDING = "pending"  # a join (or resync) with it is on its way
    ONLINE = "online"  # Redis has it
    DROPPED = "dropped"  # Redis already removed it (taken over, refused): being evicted
    LEFT = "left"


class Member:
    """One connection as presence sees it."""

    __slots__ = ("name", "address", "since", "evict", "state", "known", "reason", "older")

    def __init__(
        self, name: str, address: str, since: float, evict: Callable[[Code, str], None]
    ) -> None:
        self.name = name
        self.address = address
        self.since = since
        self.evict = evict
        self.state = State.LOCAL
        self.known = False  # a join or resync with it was sent: Redis may have it
        self.reason: str | None = None  # set when presence itself ends the connection
        # The next older connection with the same name on this node (duplicates allowed):
        # a chain rather than a list per name, which would cost every member ~90 bytes.
        self.older: Member | None = None

    def __repr__(self) -> str:
        return f"Member({self.name!r}, {self.address}, {self.state.value})"


@dataclass(frozen=True)
class Node:
    """This process as a presence node. ``id`` carries the start time, so that a
    restarted server never collides with its former self."""

    id: str
    address: str  # host:port its clients connect to
    pid: int
    started: float

    @classmethod
    def make(
        cls,
        label: str | None,
        address: str,
        worker: int | None = None,
        started: float | None = None,
    ) -> Node:
        """This process as a node; a worker's supervisor chose its ``started`` (see
        ``node_id``), so that it can remove the node the moment the worker dies."""
        started = time.time() if started is None else started
        pid = os.getpid()
        return cls(node_id(label, pid, started, worker), address, pid, started)

    def info(self) -> str:
        return json.dumps({"address": self.address, "pid": self.pid, "started": self.started})


def node_id(label: str | None, pid: int, started: float, worker: int | None = None) -> str:
    """The id of the node of process ``pid``, started at ``started`` (wall clock)."""
    base = label or f"{socket.gethostname()}:{pid}"
    if worker is not None:
        base += f"/w{worker}"
    return f"{base}@{int(started * 1000):x}"


@dataclass(frozen=True)
class PresenceConfig:
    policy: Policy = Policy.ALLOW
    prefix: str = DEFAULT_PREFIX
    node_ttl: float = DEFAULT_NODE_TTL
    reap_interval: float = DEFAULT_REAP_INTERVAL
    resync_spread: float = RESYNC_SPREAD
    stream_maxlen: int = STREAM_MAXLEN
    stream_retention: float = DEFAULT_STREAM_RETENTION
    takeover_limit: int = DEFAULT_TAKEOVER_LIMIT
    takeover_window: float = DEFAULT_TAKEOVER_WINDOW
    takeover_backoff: float = DEFAULT_TAKEOVER_BACKOFF

    def __post_init__(self) -> None:
        if self.node_ttl <= 0 or self.reap_interval <= 0 or self.resync_spread < 0:
            raise ValueError("presence intervals must be positive")
        if self.stream_retention <= 0 or self.stream_maxlen < 1:
            raise ValueError("the event stream needs a positive retention and length")
        if self.takeover_limit < 1 or self.takeover_window <= 0 or self.takeover_backoff <= 0:
            raise ValueError("the takeover limit, window and back-off must be positive")

    @property
    def stale_bound(self) -> float:
        """The longest a killed node's members stay listed, s."""
        return self.node_ttl + self.reap_interval * (1 + JITTER)


class PresenceFigures(Figures):
    """Presence's figures, in a server's snapshot beside its own: the node counts in
    ``Presence.counts``, and the gauges and the link's counters read at each snapshot."""

    redis_up = Gauge("presence_redis_up", "1 while the Redis connection is ready.", line="redis_up")
    members = Gauge(
        "presence_members", "Names online on this node, as presence sees them.", line="members"
    )
    backlog = Gauge(
        "presence_redis_backlog", "Redis commands queued or awaiting a reply.", line="backlog"
    )
    joins = Count("presence_joins", "Joins recorded by Redis.", line="joins")
    leaves = Count("presence_leaves", "Leaves recorded by Redis.", line="leaves")
    resyncs = Count("presence_resyncs", "Full rewrites of this node's members.", line="resyncs")
    overflows = Count(
        "presence_backlog_overflows",
        "Updates not sent: backlog full or Redis down.",
        line="overflows",
    )
    connects = Count("presence_redis_connects", "Redis connections made ready.")
    disconnects = Count("presence_redis_disconnects", "Redis connections lost.")
    takeovers = Count("presence_taken_over", "Connections here closed: a newer one took the name.")
    refusals = Count("presence_name_taken", "Connections refused: the name is online elsewhere.")
    reaped_nodes = Count("presence_reaped_nodes", "Dead nodes whose members this node removed.")
    reaped_members = Count("presence_reaped_members", "Members of dead nodes removed by this node.")
    lapses = Count("presence_liveness_lapses", "Times this node's liveness key had expired.")
    up = Gauge("presence_up", "1 while presence works: Redis reachable, every script succeeding.")
    errors = Labelled(
        "presence_redis_errors",
        "Redis failures: connections lost (unreachable), scripts refused at maxmemory (oom), "
        "denied by the ACL (noperm) or failing otherwise (script_error).",
        "reason",
        TROUBLES,
    )
    degraded = LabelledLevel(
        "presence_degraded", "1 while presence is degraded, by reason.", "reason", TROUBLES
    )


class Presence:
    """This node's presence in Redis; see the module's docstring."""

    def __init__(
        self,
        loop: EventLoop,
        redis: RedisAddress,
        node: Node,
        config: PresenceConfig,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.loop = loop
        self.node = node
        self.config = config
        self.keys = Keys(config.prefix)
        self.rng = rng
        self.link = RedisLink(
            loop,
            redis,
            client_name=f"hbloop:{node.id}",
            on_ready=self._on_ready,
            on_lost=self._on_lost,
            on_push=self._on_push,
            on_script_flush=self._resync_soon,
            scripts=SCRIPTS,
            channels=[self.keys.takeover(node.id)],
            # Back within a renewal period, so that a Redis restart costs no lease.
            reconnect_cap=min(RECONNECT_CAP, config.node_ttl / REFRESHES_PER_TTL),
        )
        # key (Policy.key) -> its newest connection (see Member.older)
        self._local: dict[str, Member] = {}
        self._leaves: dict[str, str] = {}  # name -> reason, for Redis when it is back
        self._leaving: dict[str, str] = {}  # name -> reason, this iteration's leaves
        self._synced = False  # Redis has (or is being sent) the whole table
        self._resync_timer: Timer | None = None
        # Resyncs sent and not yet answered. Redis answers one connection's commands in
        # order, so a renewal answered while one is out ran before it (it was written
        # ahead of the queue): what it found is stale, the resync registers the node.
        self._resyncs_out = 0
        self._timers: list[Timer] = []
        self._registered = False  # the liveness key was set on this connection
        # This node's own view of Redis: when the last renewal that Redis confirmed was
        # sent (the lease runs a TTL from there); since when every renewal has been
        # confirmed in time (None: the link is down or the lease lapsed); whether the
        # lapse was logged.
        self._renewed: float | None = None
        self._served_since: float | None = None
        self._lapse_logged = False
        self._holding = False  # Redis' clock holds every reaper after a gap (logged)
        self._took_over: set[str] = set()  # keys whose HELLO just closed a connection here
        self._backoff: dict[str, float] = {}  # key -> until (loop time): takeovers refused
        # Why presence is degraded (None: it is not), since when (None: since start,
        # before the first connection, which is not logged), and the failures not yet
        # summed up in the log; ``_failed`` counts them all, so that a heartbeat can
        # tell whether any failed while it was on its way.
        self.trouble: str | None = "unreachable"
        self._trouble_since: float | None = None
        self._unsummed: Counter[str] = Counter()
        self._failed = 0
        self.errors: Counter[str] = Counter()
        #: The counters of PresenceFigures, but the link's own.
        self.counts = {
            figure.name: 0
            for figure in PresenceFigures.figures
            if isinstance(figure, Count) and figure.name not in ("connects", "disconnects")
        }

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.link.start()
        self._every(self.config.node_ttl / REFRESHES_PER_TTL, self._heartbeat)
        self._every(self.config.reap_interval, self._reap)
        self._every(SUMMARY_INTERVAL, self._summarize)

    def close(self) -> None:
        """Leave the cluster: remove this node and its members (reason ``shutdown``)
        from Redis, waiting at most DEREGISTER_TIMEOUT, then drop the connection."""
        for timer in self._timers:
            timer.cancel()
        if self._resync_timer is not None:
            self._resync_timer.cancel()
        if self.link.ready:
            self._flush_leaves()  # with their own reasons, not the shutdown's
            self.link.drain(DEREGISTER_TIMEOUT)
        if self.link.run(DEREGISTER, (), self._args(SHUTDOWN_REASON), self._deregistered):
            self.link.drain(DEREGISTER_TIMEOUT)
        self.link.close()

    def _deregistered(self, reply: Reply) -> None:
        if isinstance(reply, int):
            log.info("presence: node %s left the cluster with %d members", self.node.id, reply)
        else:
            log.warning("presence: could not deregister node %s: %s", self.node.id, reply)

    def _every(self, period: float, action: Callable[[], None]) -> None:
        """Run ``action`` every ``period`` s, +/- JITTER, from a random phase."""
        index = len(self._timers)
        self._timers.append(
            self.loop.call_later(self.rng() * period, self._tick, index, period, action)
        )

    def _tick(self, index: int, period: float, action: Callable[[], None]) -> None:
        action()
        delay = period * (1 + JITTER * (2 * self.rng() - 1))
        self._timers[index] = self.loop.call_later(delay, self._tick, index, period, action)

    def _args(self, *rest: Any) -> tuple[Any, ...]:
        """A script's arguments: the three every script starts with, then ``rest``."""
        return (self.config.prefix, self.node.id, round(self.config.node_ttl * 1000), *rest)

    # --- the server's three calls ---------------------------------------------------------

    def check(self, name: str) -> tuple[Code, str] | None:
        """At HELLO: the code and reason to refuse ``name`` with, or None to admit it.
        NAME_TAKEN if the name is online on this node and the policy refuses
        duplicates, or (replace) while its takeovers are in back-off. Under replace,
        the connections holding it here are closed with TAKEN_OVER now. Other nodes are
        not asked: Redis settles those conflicts when the join arrives (see ``joined``)."""
        policy = self.config.policy
        if policy is Policy.ALLOW:
            return None
        key = policy.key(name)
        if policy is Policy.REPLACE:
            storm = self._storm(name, key)
            if storm is not None:
                self.counts["refusals"] += 1
                return Code.NAME_TAKEN, storm
        held = self._local.get(key)
        if held is None:
            return None
        if policy is Policy.REFUSE:
            self.counts["refusals"] += 1
            return Code.NAME_TAKEN, taken_message(name, held.name)
        for member in list(self._chain(key)):
            member.reason = "taken_over"
            self.counts["takeovers"] += 1
            log.info(
                "presence: %s reconnected to this node; closing its older connection", token(name)
            )
            member.evict(Code.TAKEN_OVER, "a newer connection took this name")
        self._took_over.add(key)
        return None

    def joined(
        self, name: str, address: str, since: float, evict: Callable[[Code, str], None]
    ) -> Member:
        """A connection completed its handshake; returns its handle for ``left``."""
        member = Member(name, address, since, evict)
        key = self.config.policy.key(name)
        member.older = self._local.get(key)
        self._local[key] = member
        self._leaves.pop(name, None)
        took_over = key in self._took_over
        self._took_over.discard(key)
        if self._synced:
            self._send_join(member, took_over)
        return member

    def left(self, member: Member, reason: str) -> None:
        """The connection of ``member`` ended; ``reason`` is the server's (timeout,
        peer_closed, ...), unless presence itself had ended it."""
        state = member.state
        if state is State.LEFT:
            return
        member.state = State.LEFT
        reason = member.reason or reason
        key = self.config.policy.key(member.name)
        newer = self._local[key]
        if newer is member:
            if member.older is None:
                del self._local[key]
            else:
                self._local[key] = member.older
        else:
            while newer.older is not member:
                newer = newer.older  # type: ignore[assignment]
            newer.older = member.older
        member.older = None
        if key in self._local:
            # The name is still online here (duplicates allowed), or a newer look-alike
            # took it over here, whose join removes it from Redis.
            return
        if state is State.DROPPED or reason == SHUTDOWN_REASON:
            return  # Redis removed it already, or will with the whole node (close)
        if self._synced:
            self._send_leave(member.name, reason)
        elif member.known:
            self._leaves[member.name] = reason

    def _chain(self, key: str) -> Iterator[Member]:
        """The connections of ``key`` (Policy.key) on this node, newest first."""
        member = self._local.get(key)
        while member is not None:
            yield member
            member = member.older

    # --- takeover storms --------------------------------------------------------------

    def _storm(self, name: str, key: str) -> str | None:
        """Why takeovers of ``name`` (whose key is ``key``) are refused now, if they are
        (its back-off, as the last join of it answered by Redis said)."""
        until = self._backoff.get(key)
        if until is None:
            return None
        left = until - self.loop.time()
        if left <= 0:
            del self._backoff[key]
            return None
        config = self.config
        return (
            f"{token(name)} was taken over more than {config.takeover_limit} times within "
            f"{config.takeover_window:g}s: refused for {left:.1f}s"
        )

    def _backoff_until(self, key: str, backoff_ms: int) -> None:
        if backoff_ms > 0:
            self._backoff[key] = self.loop.time() + backoff_ms / 1000

    def _forget_backoffs(self) -> None:
        now = self.loop.time()
        for name in [name for name, until in self._backoff.items() if until <= now]:
            del self._backoff[name]

    # --- joins and leaves -----------------------------------------------------------------

    def _send_join(self, member: Member, took_over: bool) -> None:
        self._flush_leaves()  # a leave of this name must reach Redis before the join
        config = self.config
        args = self._args(
            member.name,
            config.policy.key(member.name),
            member.address,
            repr(member.since),
            config.policy.value,
            int(took_over),
            config.takeover_limit,
            round(config.takeover_window * 1000),
            round(config.takeover_backoff * 1000),
            round(config.takeover_backoff * 1000 * 2**TAKEOVER_BACKOFF_DOUBLINGS),
        )
        if self.link.run(JOIN, (), args, lambda reply: self._join_answered(member, reply)):
            member.state = State.PENDING
            member.known = True
        else:
            self._overflow()

    def _join_answered(self, member: Member, reply: Reply) -> None:
        if member.state is not State.PENDING:
            return  # it left meanwhile (its leave follows), or the link was lost
        if isinstance(reply, RedisUnavailable):
            member.state = State.LOCAL  # the resync will carry it
            return
        if not isinstance(reply, list):
            self._script_failed("join", reply)
            member.state = State.LOCAL
            self._resync_soon()
            return
        if reply[0] == -1:  # this node was reaped: only a resync brings its members back
            member.state = State.LOCAL
            self._resync_soon(0.0)
            return
        joined, owner, backoff = reply[0], _text(reply[1]), reply[2]
        key = self.config.policy.key(member.name)
        self._backoff_until(key, backoff)
        if joined:
            member.state = State.ONLINE
            self.counts["joins"] += 1
            if owner and self.config.policy is Policy.REPLACE:
                log.info(
                    "presence: %s took over %s from node %s",
                    member.address,
                    token(member.name),
                    owner,
                )
            if backoff:
                log.warning("presence: takeover storm: %s", self._storm(member.name, key))
            return
        message = self._storm(member.name, key) if backoff else None
        online = f"{token(member.name)} is online on node {owner}"
        self._drop(member, Code.NAME_TAKEN, message or online)

    def _send_leave(self, name: str, reason: str) -> None:
        """Gather the leave for the end of the iteration (``_flush_leaves``)."""
        if not self._leaving:
            self.loop.call_soon(self._flush_leaves)
        self._leaving[name] = reason

    def _flush_leaves(self) -> None:
        """Send the gathered leaves, LEAVE_BATCH a script. Any other command of this
        node's is queued after them (joins and resyncs call this first), so Redis runs
        a name's leave and its next join in the order they happened here."""
        leaving, self._leaving = self._leaving, {}
        pairs = list(leaving.items())
        for start in range(0, len(pairs), LEAVE_BATCH):
            batch = pairs[start : start + LEAVE_BATCH]
            args = self._args(*(field for pair in batch for field in pair))
            if not self.link.run(LEAVE, (), args, functools.partial(self._left, batch)):
                self._leaves.update(pairs[start:])  # for the resync
                if self.link.ready:
                    self._overflow()  # the backlog is full (else the link was lost)
                return

    def _left(self, batch: list[tuple[str, str]], reply: Reply) -> None:
        if isinstance(reply, int):
            self.counts["leaves"] += reply
            return
        for name, reason in batch:
            if self.config.policy.key(name) not in self._local:
                self._leaves[name] = reason
        if not isinstance(reply, RedisUnavailable):
            self._script_failed("leave", reply)
            self._resync_soon()

    def _drop(self, member: Member, code: Code, message: str) -> None:
        """Redis gave the name to another node: close this connection."""
        member.state = State.DROPPED
        key = "takeovers" if code is Code.TAKEN_OVER else "refusals"
        self.counts[key] += 1
        log.info(
            "presence: closing %s %s with %s: %s",
            token(member.name),
            member.address,
            code.name,
            message,
        )
        member.evict(code, message)

    def _yield(self, member: Member, where: str) -> None:
        """Redis settled a name held twice against ``member``, by the policy's rule."""
        if self.config.policy is Policy.REPLACE:
            self._drop(member, Code.TAKEN_OVER, f"a newer connection {where} took this name")
        else:
            held = f"{token(member.name)} is held by an earlier connection {where}"
            self._drop(member, Code.NAME_TAKEN, held)

    def _on_push(self, message: list[Any]) -> None:
        """Redis took a name from this node: another node's join took it over (replace),
        or another node's resync settled a name held twice against this one."""
        if len(message) != 3 or message[0] != b"message":
            return  # subscription confirmations
        name = _text(message[2])
        for member in list(self._chain(self.config.policy.key(name))):
            # A join still pending reached Redis after the notice: it is the newer.
            if member.state in (State.ONLINE, State.LOCAL):
                self._yield(member, "on another node")

    # --- Redis coming and going -------------------------------------------------------

    def _on_ready(self) -> None:
        if self.trouble == "unreachable":
            self._recovered()
        self._registered = False
        self._heartbeat()
        first = self.counts["resyncs"] == 0 and not self._leaves
        self._resync_soon(0.0 if first else None)

    def _on_lost(self, reason: str) -> None:
        self._count_failure("unreachable")
        self._degrade("unreachable", f"lost the Redis connection: {reason}")
        self._synced = False
        self._registered = False
        self._served_since = None
        if self._resync_timer is not None:
            self._resync_timer.cancel()
            self._resync_timer = None
        for key in self._local:
            for member in self._chain(key):
                if member.state in (State.PENDING, State.ONLINE):
                    member.state = State.LOCAL

    def _overflow(self) -> None:
        self.counts["overflows"] += 1
        if self._synced and self.link.ready:
            log.warning(
                "presence: %d Redis commands awaiting replies (the bound): updates are "
                "kept here and rewritten in one resync",
                self.link.backlog,
            )
            self._resync_soon()
        self._synced = False

    def _resync_soon(self, delay: float | None = None) -> None:
        """Resync after ``delay`` s (None: a random one, up to ``resync_spread``), or
        sooner if one is already due sooner."""
        self._synced = False
        wait = self.rng() * self.config.resync_spread if delay is None else delay
        timer = self._resync_timer
        if timer is not None:
            if timer <= self.loop.time() + wait:  # a Timer is its deadline
                return
            timer.cancel()
        self._resync_timer = self.loop.call_later(wait, self._resync)

    def _resync(self) -> None:
        """Make Redis' view of this node exactly the local table, in one script."""
        self._resync_timer = None
        self._flush_leaves()  # their reasons; if they cannot go, they go with it
        batch: list[Member] = []
        names: list[Any] = []
        for key in self._local:
            live = [m for m in self._chain(key) if m.state is not State.DROPPED]
            if live:
                newest = live[0]
                names += [newest.name, key, newest.address, repr(newest.since)]
                batch += live
        args = [*self._args(self.node.info(), self.config.policy.value, len(names) // 4), *names]
        leaves = self._leaves
        for name, reason in leaves.items():
            args += [name, reason]
        started = self.loop.time()

        def answered(reply: Reply) -> None:
            self._resynced(batch, leaves, started, reply)

        if not self.link.run(RESYNC, (), args, answered):
            if self.link.ready:  # the backlog is full: try again once it has drained
                self._resync_soon()
            return
        self._leaves = {}
        self._synced = True
        self._resyncs_out += 1
        for member in batch:
            member.state = State.PENDING
            member.known = True

    def _resynced(
        self, batch: list[Member], leaves: dict[str, str], started: float, reply: Reply
    ) -> None:
        self._resyncs_out -= 1
        if not isinstance(reply, list):
            for name, reason in leaves.items():  # not told yet: keep them for next time
                if self.config.policy.key(name) not in self._local:
                    self._leaves.setdefault(name, reason)
            if not isinstance(reply, RedisUnavailable):
                self._script_failed("resync", reply)
                self._resync_soon()
            return
        self.counts["resyncs"] += 1
        self._registered = True
        self._renewal_confirmed(started)
        joined, left, won = reply[0], reply[1], reply[2]
        lost = {_text(name) for name in reply[3:]}
        self.counts["joins"] += joined
        self.counts["leaves"] += left
        for member in batch:
            if member.state is State.PENDING:
                if member.name in lost:
                    self._yield(member, "on another node (settled after a partition)")
                else:
                    member.state = State.ONLINE
        log.info(
            "presence: resync of node %s: %d members in %.0f ms (%d joined, %d left, %d lost "
            "to other nodes)",
            self.node.id,
            len({m.name for m in batch}),
            (self.loop.time() - started) * 1000,
            joined,
            left,
            len(lost),
        )
        if won or lost:
            log.warning(
                "presence: %d names were held on two nodes (a partition): settled by policy "
                "%s, %d kept here, %d yielded; see the conflict events",
                won + len(lost),
                self.config.policy.value,
                won,
                len(lost),
            )

    # --- timers ---------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        self.link.take_replies()  # the last renewal's confirmation may be waiting
        self._lease_lapsing()
        if not self.link.ready:
            return
        sent, failed = self.loop.time(), self._failed
        self.link.run(
            HEARTBEAT,
            (),
            self._args(self.node.info()),
            lambda reply: self._heartbeat_answered(sent, failed, reply),
            first=True,  # the lease renewal: never behind bulk joins and leaves
        )

    def _heartbeat_answered(self, sent: float, failed: int, reply: Reply) -> None:
        if not isinstance(reply, list):
            if not isinstance(reply, RedisUnavailable):
                self._script_failed("heartbeat", reply)
            return
        if self._failed == failed:  # nothing failed while it was on its way
            self._recovered()
        renewed, grace = reply
        if renewed >= 0:
            self._renewal_confirmed(sent)
        if renewed == 1:
            self._registered = True
            return
        if self._resyncs_out:
            return  # a resync ran after it in Redis: it registers the node and its members
        if self._registered:
            self.counts["lapses"] += 1
            log.warning(
                "presence: the liveness key of node %s had expired (Redis was slow or "
                "unreachable for over %gs); its members may have been reaped: resyncing",
                self.node.id,
                self.config.node_ttl,
            )
        self._registered = renewed == 0
        # Reaped while Redis served the others: its members are missing, resync now.
        # After a Redis outage (grace) every node resyncs: spread them.
        self._resync_soon(0.0 if renewed == -1 and grace == 0 else None)

    def _renewal_confirmed(self, sent: float) -> None:
        now = self.loop.time()
        if self._lapse_logged:
            self._lapse_logged = False
            log.warning(
                "presence: Redis confirms node %s's lease again, %.1fs after the last "
                "renewal (TTL %gs)",
                self.node.id,
                now - (self._renewed or sent),
                self.config.node_ttl,
            )
        self._renewed = sent
        if self._served_since is None:
            self._served_since = now

    def _lease_lapsing(self) -> None:
        """Say once when this node's lease has run out by its own clock (Redis did not
        confirm a renewal for a TTL: other nodes may reap its members), and stop its
        reaper until it has been served for a TTL again."""
        renewed = self._renewed
        if renewed is None or self._lapse_logged:
            return
        out = self.loop.time() - renewed
        if out >= self.config.node_ttl:
            self._lapse_logged = True
            self._served_since = None
            log.warning(
                "presence: no renewal of node %s's lease for %.1fs (TTL %gs): other nodes "
                "may reap its %d members; they are re-registered when Redis is back",
                self.node.id,
                out,
                self.config.node_ttl,
                len(self._local),
            )

    def _reap(self) -> None:
        self._forget_backoffs()
        served = self._served_since
        # This node's own view first: reap only once served for a full TTL, so that the
        # nodes it judges have had at least as long as it has to renew.
        if served is None or self.loop.time() - served < self.config.node_ttl:
            return
        config = self.config
        retention_ms = round(config.stream_retention * 1000)
        args = self._args(retention_ms, config.stream_maxlen, TRIM_BATCH)
        self.link.run(REAP, (), args, self._reaped)

    def _reaped(self, reply: Reply) -> None:
        if not isinstance(reply, list):
            if not isinstance(reply, RedisUnavailable):
                self._script_failed("reap", reply)
            return
        held, gap = reply[0], reply[1]
        if held > 0:
            if gap > 0 and not self._holding:
                self._holding = True
                log.warning(
                    "presence: Redis ran no presence script for %.1fs (it was stopped, or "
                    "no node could reach it): no node is reaped for %.1fs, so that every "
                    "node can renew its lease first",
                    gap / 1000,
                    held / 1000,
                )
            return
        if self._holding:
            self._holding = False
            log.info(
                "presence: reaping resumed: every node has had %gs to renew its lease",
                self.config.node_ttl,
            )
        for i in range(2, len(reply), 2):
            node, count = _text(reply[i]), reply[i + 1]
            self.counts["reaped_nodes"] += 1
            self.counts["reaped_members"] += count
            log.warning(
                "presence: reaped node %s: its liveness key expired; %d members removed "
                "(reason node_lost)",
                node,
                count,
            )

    # --- figures --------------------------------------------------------------------------

    def snapshot(self) -> PresenceFigures:
        figures = {
            "redis_up": int(self.link.ready),
            "backlog": self.link.backlog,
            "members": len(self._local),
            "connects": self.link.connects,
            "disconnects": self.link.disconnects,
            "up": int(self.trouble is None),
            "errors": dict(self.errors),
            "degraded": {} if self.trouble is None else {self.trouble: 1},
            **self.counts,
        }
        return PresenceFigures.from_json(figures)

    # --- health -----------------------------------------------------------------------------

    def _script_failed(self, what: str, reply: Reply) -> None:
        trouble = trouble_of(reply)
        self._count_failure(trouble)
        self._degrade(trouble, f"the {what} script failed: {reply}")

    def _count_failure(self, trouble: str) -> None:
        self.errors[trouble] += 1
        self._unsummed[trouble] += 1
        self._failed += 1

    def _degrade(self, trouble: str, detail: str) -> None:
        """Log a change of state, once; the failures that follow are summed up."""
        if trouble == self.trouble:
            return
        if self.trouble is None:
            self._trouble_since = self.loop.time()
        self.trouble = trouble
        log.error("presence: degraded (%s): %s", trouble, detail)

    def _recovered(self) -> None:
        if self.trouble is None:
            return
        since = self._trouble_since
        if since is not None:
            log.warning(
                "presence: ok again after %.1fs degraded (%s)",
                self.loop.time() - since,
                self.trouble,
            )
        self.trouble = None
        self._trouble_since = None

    def _summarize(self) -> None:
        failed, self._unsummed = self._unsummed, Counter()
        if self.trouble is None and not failed:
            return
        log.warning(
            "presence: %s; %d Redis failures in the last %gs (%s)",
            "ok" if self.trouble is None else f"degraded ({self.trouble})",
            sum(failed.values()),
            SUMMARY_INTERVAL,
            " ".join(f"{trouble}={n}" for trouble, n in sorted(failed.items())) or "none",
        )


def check_redis(address: RedisAddress, prefix: str) -> str | None:
    """Why a node could not use the Redis at ``address``, or None: unreachable, its
    handshake refused, a script it cannot load, or a command presence uses that the
    ACL denies (asked of Redis by the CHECK script, which writes nothing)."""
    try:
        redis = BlockingRedis(address, CONNECT_TIMEOUT, "hbloop:check")
    except RedisUnavailable as exc:
        return str(exc)
    try:
        loads = [("SCRIPT", "LOAD", script.source) for script in (*SCRIPTS, CHECK)]
        replies = redis.execute(*loads, ("EVALSHA", CHECK.sha, 0, prefix, "check", 0))
    except RedisUnavailable as exc:
        return str(exc)
    finally:
        redis.close()
    for reply in replies:
        if isinstance(reply, Exception):
            return f"{address} refused a command presence needs: {reply}"
    denied = replies[-1]
    if denied:
        return f"the Redis user may not run: {', '.join(_text(d) for d in denied)}"
    return None


def trouble_of(reply: Reply) -> str:
    """What a failed command's reply says is wrong, one of TROUBLES."""
    if isinstance(reply, RedisUnavailable):
        return "unreachable"
    text = str(reply)
    if text.startswith("NOPERM") or "can't run this command" in text:  # (a call in a script)
        return "noperm"
    return "oom" if text.startswith("OOM") else "script_error"


class NodeRemover:
    """Removes the nodes of dead processes from Redis, with their members (reason
    ``node_lost``), the moment they are known dead rather than when their lease
    expires: a ``--workers`` supervisor sees a worker's exit at once, and without this
    its names would stay held (NAME_TAKEN under refuse) for up to a TTL. A node that
    had stopped cleanly is gone already, and removing it again changes nothing."""

    def __init__(
        self, loop: EventLoop, redis: RedisAddress, prefix: str, node_ttl: float, client: str
    ) -> None:
        self.prefix = prefix
        self.ttl_ms = round(node_ttl * 1000)
        self._due: list[str] = []  # nodes to remove once Redis can be reached
        self.link = RedisLink(
            loop,
            redis,
            client_name=f"hbloop:{client}",
            on_ready=self._send,
            on_lost=lambda reason: None,  # the link logs it; _due waits for the next
            scripts=(DEREGISTER,),
        )

    def start(self) -> None:
        self.link.start()

    def remove(self, node: str) -> None:
        self._due.append(node)
        self._send()

    def close(self) -> None:
        """Send what is due, waiting at most DEREGISTER_TIMEOUT, and disconnect."""
        if self.link.ready:
            self.link.drain(DEREGISTER_TIMEOUT)
        self.link.close()

    def _send(self) -> None:
        while self._due and self.link.ready:
            node = self._due[0]
            args = (self.prefix, node, self.ttl_ms, NODE_LOST)
            if not self.link.run(DEREGISTER, (), args, functools.partial(self._removed, node)):
                return  # not ready: the next connection sends it
            self._due.pop(0)

    def _removed(self, node: str, reply: Reply) -> None:
        if isinstance(reply, int):
            if reply:
                log.warning(
                    "presence: removed node %s of a dead process with its %d members (reason %s)",
                    node,
                    reply,
                    NODE_LOST,
                )
        elif isinstance(reply, RedisUnavailable):
            self._due.append(node)  # sent again on the next connection
        else:
            log.error("presence: could not remove node %s: %s", node, reply)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
