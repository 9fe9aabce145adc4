"""``hbloop who`` and ``hbloop watch``: presence as Redis holds it, for people and scripts.

Both are short blocking programs over ``BlockingRedis``; neither writes to Redis.
``who`` reads the node set, each node's liveness key and its members in two round
trips. ``watch`` follows the event stream with ``XREAD BLOCK`` from a last-seen id,
so it can resume after a lost connection (or a restart, with ``--from ID``) without
missing an event still in the stream: at-least-once. Events older than the stream's
retention are trimmed; when some that ``watch`` would have printed are gone (the
reapers keep the newest id they trimmed), it says so and exits 1 rather than skip
them silently.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from hbloop.core.backoff import Backoff
from hbloop.core.logfields import token
from hbloop.presence.redis_link import BlockingRedis, RedisAddress, RedisUnavailable
from hbloop.presence.scripts import Keys

# How long one command of these tools may wait for Redis.
TOOL_TIMEOUT = 5.0

# watch blocks in XREAD this long at a time (then simply asks again), and reads at most
# this many events per call.
WATCH_BLOCK_MS = 5000
WATCH_BATCH = 500


@dataclass(frozen=True)
class Online:
    """One name online on one node."""

    name: str
    node: str
    address: str  # the client's address as the node saw it
    since: float  # wall clock of its connection
    node_address: str  # where that node's clients connect
    node_alive: bool  # False: the node's liveness key expired; the reaper will remove it


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def online(redis: BlockingRedis, keys: Keys, name: str | None = None) -> list[Online]:
    """Every name online (or the connections of ``name``), sorted by name and node."""
    nodes = sorted(_text(n) for n in redis.execute(("SMEMBERS", keys.nodes))[0])
    commands: list[tuple[Any, ...]] = []
    for node in nodes:
        commands.append(("GET", keys.node(node)))
        if name is None:
            commands.append(("HGETALL", keys.members(node)))
        else:
            commands.append(("HMGET", keys.members(node), name))
    replies = redis.execute(*commands) if commands else []
    found: list[Online] = []
    for node, info, members in zip(nodes, replies[::2], replies[1::2], strict=True):
        node_address = json.loads(info)["address"] if info else "?"
        pairs = members.items() if name is None else [(name, members[0])]
        for member, value in pairs:
            if value is None:
                continue
            details = json.loads(value)
            found.append(
                Online(
                    _text(member),
                    node,
                    details["address"],
                    details["since"],
                    node_address,
                    info is not None,
                )
            )
    return sorted(found, key=lambda o: (o.name, o.node))


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _clock(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


def who(address: RedisAddress, prefix: str, name: str | None, as_json: bool, out: TextIO) -> int:
    """Print who is online; exit status 1 if ``name`` was asked for and is not."""
    try:
        redis = BlockingRedis(address, TOOL_TIMEOUT, "hbloop-who")
    except RedisUnavailable as exc:
        print(f"hbloop: error: {exc}", file=sys.stderr)
        return 2
    try:
        rows = online(redis, Keys(prefix), name)
    except RedisUnavailable as exc:
        print(f"hbloop: error: {exc}", file=sys.stderr)
        return 2
    finally:
        redis.close()
    if as_json:
        print(json.dumps({"online": [asdict(row) for row in rows]}, indent=2), file=out)
    elif not rows:
        print(f"{token(name)} is not online" if name else "nobody is online", file=out)
    else:
        now = time.time()
        table = [("NAME", "NODE", "ADDRESS", "CONNECTED")]
        for row in rows:
            since = f"{_clock(row.since)} ({_ago(now - row.since)} ago)"
            # Names (and node ids) quoted when not plain, so that none forges a column.
            node = (
                token(row.node)
                if row.node_alive
                else f"{token(row.node)} (lost, awaiting the reaper)"
            )
            table.append((token(row.name), node, row.address, since))
        widths = [max(len(line[i]) for line in table) for i in range(3)]
        for line in table:
            print(
                "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False))
                + "  "
                + line[3],
                file=out,
            )
        nodes = len({row.node for row in rows})
        print(f"{len(rows)} online on {nodes} node{'s' if nodes != 1 else ''}", file=out)
    return 0 if rows or name is None else 1


@dataclass(frozen=True)
class Event:
    id: str
    fields: dict[str, str]

    @property
    def at(self) -> float:
        """Wall clock of the event: the stream id's milliseconds."""
        return int(self.id.split("-")[0]) / 1000

    def to_text(self) -> str:
        fields = dict(self.fields)
        kind, name = fields.pop("event", "?"), fields.pop("name", "?")
        rest = " ".join(f"{key}={token(value)}" for key, value in fields.items())
        return f"{self.id}  {_clock(self.at)}  {kind:<5}  {token(name)}  {rest}"

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "at": self.at, **self.fields})


def _entries(reply: Any) -> list[Event]:
    """The events of an XREAD reply (a RESP3 map of one stream), or of XRANGE."""
    if reply is None:
        return []
    entries = next(iter(reply.values())) if isinstance(reply, dict) else reply
    return [
        Event(
            _text(entry_id), {_text(k): _text(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}
        )
        for entry_id, raw in entries
    ]


def _id(text: str) -> tuple[int, int]:
    """A stream id as numbers; a bare ``ms`` is ``ms-0``, as XREAD reads it."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def trimmed_after(redis: BlockingRedis, keys: Keys, after: str) -> tuple[str, str] | None:
    """If events after id ``after`` were trimmed from the stream: the newest trimmed
    id and the oldest kept one (``-`` if none); None if every event after it is kept."""
    trimmed, first = redis.execute(
        ("GET", keys.trimmed), ("XRANGE", keys.events, "-", "+", "COUNT", 1)
    )
    if trimmed is None or _id(_text(trimmed)) <= _id(after):
        return None
    return _text(trimmed), _text(first[0][0]) if first else "-"


def last_id(redis: BlockingRedis, keys: Keys) -> str:
    """The id of the newest event, or 0-0: where ``$`` stands now."""
    last = redis.execute(("XREVRANGE", keys.events, "+", "-", "COUNT", 1))[0]
    return _text(last[0][0]) if last else "0-0"


def follow(redis: BlockingRedis, keys: Keys, after: str) -> Iterator[Event]:
    """Events after id ``after``, as they come, forever."""
    while True:
        command = (
            "XREAD",
            "COUNT",
            WATCH_BATCH,
            "BLOCK",
            WATCH_BLOCK_MS,
            "STREAMS",
            keys.events,
            after,
        )
        for event in _entries(redis.execute(command)[0]):
            after = event.id
            yield event


def watch(
    address: RedisAddress,
    prefix: str,
    start: str,
    as_json: bool,
    count: int | None,
    out: TextIO,
) -> int:
    """Print events as they come, one a line; reconnect (resuming from the last id
    printed) when Redis goes away. Stops after ``count`` events, or on Ctrl-C; exits 1
    when events it should print were already trimmed from the stream."""
    if start != "$":
        try:
            _id(start)
        except ValueError:
            error = f"hbloop: error: --from {start!r} is not a stream id: MS or MS-SEQ"
            print(error, file=sys.stderr)
            return 2
    keys = Keys(prefix)
    backoff = Backoff()
    after, printed = start, 0
    while True:
        try:
            redis = BlockingRedis(address, TOOL_TIMEOUT + WATCH_BLOCK_MS / 1000, "hbloop-watch")
            try:
                backoff.reset()
                if after == "$":
                    after = last_id(redis, keys)
                # --from 0 asks for what is kept; any other id, for everything after it.
                trimmed = None if _id(after) == (0, 0) else trimmed_after(redis, keys, after)
                if trimmed is not None:
                    print(
                        f"watch: events after {after} were already trimmed from the stream "
                        f"(up to {trimmed[0]}; the oldest kept is {trimmed[1]}): they are "
                        "lost to this reader; --from 0 replays what is kept",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
                for event in follow(redis, keys, after):
                    print(event.to_json() if as_json else event.to_text(), file=out, flush=True)
                    after = event.id
                    printed += 1
                    if count is not None and printed >= count:
                        return 0
            finally:
                redis.close()
        except RedisUnavailable as exc:
            delay = backoff.next_delay()
            print(
                f"watch: {exc}; retrying in {delay:.1f}s from {after}", file=sys.stderr, flush=True
            )
            time.sleep(delay)
        except KeyboardInterrupt:
            return 0
