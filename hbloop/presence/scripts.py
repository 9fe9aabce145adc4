"""The Redis side of presence: the key layout and the Lua scripts that change it.

Every change is one script, so that Redis applies it atomically and in the order the
nodes' commands arrive; that order is the cluster's one truth about who came first.

Keys, under a prefix (default ``hbloop:``; every name below is prefixed):

=======================  ======  ===================================================
``nodes``                set     ids of the registered nodes
``node:<node>``          string  a node's liveness key, with a TTL; JSON about the
                                 node (address clients connect to, pid, start time)
``members:<node>``       hash    name -> JSON ``{"address": ..., "since": ...}``: the
                                 names online on that node
``index``                hash    name -> node: where the name joined last
``events``               stream  join and leave events, capped with MAXLEN ~
``takeover:<node>``      pubsub  names another node took over from this one
=======================  ======  ===================================================

A node's members and the index entries pointing to it are removed by its graceful
stop, or by the reaper once its liveness key has expired. The scripts build the
keys of *other* nodes from the prefix, so presence needs one Redis (or a primary
with replicas), not Redis Cluster.
"""

from __future__ import annotations

from hbloop.presence.redis_link import Script

# Shared Lua helpers, prepended to each script that needs them. ``prefix`` is a
# global set by each script from ARGV[1].
_HELPERS = """
local prefix = ARGV[1]
local function node_key(node) return prefix .. 'node:' .. node end
local function members_key(node) return prefix .. 'members:' .. node end
local index_key = prefix .. 'index'
local events_key = prefix .. 'events'
local nodes_key = prefix .. 'nodes'

local function event(maxlen, ...)
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', ...)
end

-- The node that holds name, if it is another live node that still lists it.
local function live_owner(name, node)
  local owner = redis.call('HGET', index_key, name)
  if owner and owner ~= node and redis.call('EXISTS', node_key(owner)) == 1
      and redis.call('HEXISTS', members_key(owner), name) == 1 then
    return owner
  end
  return nil
end

-- Remove name from node: the member, the index entry if it still points to node
-- (a client that reconnected elsewhere first keeps its entry), and a leave event.
local function remove_member(node, name, reason, maxlen)
  if redis.call('HGET', index_key, name) == node then
    redis.call('HDEL', index_key, name)
  end
  if redis.call('HDEL', members_key(node), name) == 1 then
    event(maxlen, 'event', 'leave', 'name', name, 'node', node, 'reason', reason)
    return 1
  end
  return 0
end

-- Make name a member of node, and the index point to it; a join event if it is new.
local function add_member(node, name, address, since, maxlen)
  redis.call('HSET', index_key, name, node)
  local info = cjson.encode({address = address, since = tonumber(since)})
  if redis.call('HSET', members_key(node), name, info) == 1 then
    event(maxlen, 'event', 'join', 'name', name, 'node', node,
          'address', address, 'since', since)
    return 1
  end
  return 0
end

-- Policy replace: name moves from owner to the caller; owner hears of it.
local function take_over(owner, name, maxlen)
  remove_member(owner, name, 'taken_over', maxlen)
  redis.call('PUBLISH', prefix .. 'takeover:' .. owner, name)
end

local function remove_node(node, reason, maxlen)
  local names = redis.call('HKEYS', members_key(node))
  for _, name in ipairs(names) do
    remove_member(node, name, reason, maxlen)
  end
  redis.call('DEL', members_key(node), node_key(node))
  redis.call('SREM', nodes_key, node)
  return #names
end

-- Refresh the liveness key; 1 if it was still there, 0 if it had to be made anew.
local function register(node, info, ttl_ms)
  if redis.call('SET', node_key(node), info, 'PX', ttl_ms, 'XX') then
    return 1
  end
  redis.call('SET', node_key(node), info, 'PX', ttl_ms)
  redis.call('SADD', nodes_key, node)
  return 0
end
"""


def _script(body: str) -> Script:
    return Script(_HELPERS + body)


# ARGV: prefix, node, name, address, since, policy, maxlen.
# Returns {1, previous owner or ''} when joined, {0, owner} when refused.
JOIN = _script(
    """
local node, name, address, since, policy, maxlen =
  ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local owner = live_owner(name, node)
if owner and policy == 'refuse' then
  return {0, owner}
end
if owner and policy == 'replace' then
  take_over(owner, name, maxlen)
end
add_member(node, name, address, since, maxlen)
return {1, owner or ''}
"""
)

# ARGV: prefix, node, name, reason, maxlen. Returns 1 if the member was there.
LEAVE = _script(
    """
return remove_member(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""
)

# ARGV: prefix, node, node info, ttl in ms. Returns 1, or 0 if the key had expired.
HEARTBEAT = _script(
    """
return register(ARGV[2], ARGV[3], ARGV[4])
"""
)

# ARGV: prefix, maxlen. Removes every node whose liveness key has expired, with its
# members (leave events with reason node_lost). Returns {node, members, ...}.
REAP = _script(
    """
local reaped = {}
for _, node in ipairs(redis.call('SMEMBERS', nodes_key)) do
  if redis.call('EXISTS', node_key(node)) == 0 then
    reaped[#reaped + 1] = node
    reaped[#reaped + 1] = remove_node(node, 'node_lost', ARGV[2])
  end
end
return reaped
"""
)

# ARGV: prefix, node, reason, maxlen. A node's graceful stop. Returns its members.
DEREGISTER = _script(
    """
return remove_node(ARGV[2], ARGV[3], ARGV[4])
"""
)

# ARGV: prefix, node, node info, ttl ms, policy, maxlen, member count n, then n x
# (name, address, since), then (name, reason) pairs for members that left while the
# node could not tell Redis.
# Registers the node and makes its members exactly the n given: new ones join, extra
# ones leave with their recorded reason. A name that another live node holds is, under
# refuse, "lost" (the holder keeps it); under replace, the later connection (by
# ``since``) keeps it. Returns {joined, left, lost names...}.
RESYNC = _script(
    """
local node, policy, maxlen, n = ARGV[2], ARGV[5], ARGV[6], tonumber(ARGV[7])
register(node, ARGV[3], ARGV[4])
local keep, result = {}, {0, 0}
local first = 8
for i = first, first + 3 * (n - 1), 3 do
  local name, since = ARGV[i], ARGV[i + 2]
  local owner = policy ~= 'allow' and live_owner(name, node)
  if owner and policy == 'replace' then
    local theirs = cjson.decode(redis.call('HGET', members_key(owner), name))
    if tonumber(since) > theirs.since then
      take_over(owner, name, maxlen)
      owner = nil
    end
  end
  if owner then
    result[#result + 1] = name
  else
    keep[name] = true
    result[1] = result[1] + add_member(node, name, ARGV[i + 1], since, maxlen)
  end
end
local reasons = {}
for i = first + 3 * n, #ARGV, 2 do
  reasons[ARGV[i]] = ARGV[i + 1]
end
for _, name in ipairs(redis.call('HKEYS', members_key(node))) do
  if not keep[name] then
    result[2] = result[2] + remove_member(node, name, reasons[name] or 'unknown', maxlen)
  end
end
return result
"""
)

SCRIPTS = (JOIN, LEAVE, HEARTBEAT, REAP, DEREGISTER, RESYNC)


class Keys:
    """The key and channel names under ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes = prefix + "nodes"
        self.index = prefix + "index"
        self.events = prefix + "events"

    def node(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def members(self, node: str) -> str:
        return f"{self.prefix}members:{node}"

    def takeover(self, node: str) -> str:
        return f"{self.prefix}takeover:{node}"
