"""The Redis side of presence: the key layout and the Lua scripts that change it.

Every change is one script, so that Redis applies it atomically and in the order the
nodes' commands arrive; that order is the cluster's one truth about who came first.

Keys, under a prefix (default ``hbloop:``; every name below is prefixed):

=======================  ======  ===================================================
``nodes``                set     ids of the registered nodes
``node:<node>``          string  a node's liveness key (its lease), with a TTL; JSON
                                 about the node (address clients connect to, pid,
                                 start time)
``members:<node>``       hash    name -> JSON ``{"address": ..., "since": ...,
                                 "key": ...}``: the names online on that node, as
                                 their clients sent them, and each one's key
``index``                hash    key -> JSON ``[node, name]``: where the identity
                                 joined last, and as which name. A name's key is its
                                 confusable skeleton under refuse and replace
                                 (protocol.md N3: look-alike names are one
                                 identity), the name itself under allow
``events``               stream  join, leave and conflict events, trimmed by the
                                 reapers: by age (XTRIM MINID), then to a length cap
``trimmed``              string  the newest event id trimmed from the stream, so
                                 that a reader can tell whether it missed events
``clock``                hash    Redis' own view of its service: ``seen`` (ms of the
                                 last presence script), ``up`` (since when scripts
                                 have run without a gap), ``gap`` (the last gap, ms)
``takeovers:<key>``      hash    takeovers of a name (by key) in the current window,
                                 and its back-off (policy replace); expires when calm
``takeover:<node>``      pubsub  names Redis took from this node: a newer connection
                                 took it over (replace), or an earlier one claimed it
                                 back after a partition (refuse)
=======================  ======  ===================================================

**Leases judged fairly.** A node is reaped only when it could have renewed its lease
and did not: its key has expired *and* Redis has served presence scripts without a gap
for a full TTL (``clock``). A gap longer than half a TTL means Redis was stopped, or
no node could reach it; after one, no node is reaped, and no expired lease yields a
name, until every node has had a full TTL to renew (Consul resets its session TTLs
on a leader failover, and etcd's new leader extends every lease, for the same
reason).

**No half-applied state.** Redis does not roll a script back when a command in it
fails. Each script therefore checks its arguments and the types of the keys it will
write, does all its reads, and asks the ACL whether it may make every kind of write
presence makes (``redis.acl_check_cmd``, Redis 7), before its first write; after that
no command of it can fail (an OOM error can only refuse a script's first write). The
CHECK script asks the ACL about every command presence uses, for ``--redis-required``.

The scripts build the keys of *other* nodes from the prefix, so presence needs one
Redis (or a primary with replicas), not Redis Cluster; and Redis 6.2 or later (XTRIM
MINID, exclusive ranges).
"""

from __future__ import annotations

from hbloop.presence.redis_link import Script

# Shared Lua, prepended to each script. Every script's ARGV starts with the same three:
# prefix, node, node TTL (ms); its own arguments follow.
_HELPERS = """
local prefix, node = ARGV[1], ARGV[2]

local function number(i)
  local value = tonumber(ARGV[i])
  if value == nil or value ~= value or value == math.huge or value == -math.huge then
    error('hbloop: argument ' .. i .. ' is not a number: ' .. tostring(ARGV[i]))
  end
  return value
end

local ttl_ms = number(3)
local function node_key(n) return prefix .. 'node:' .. n end
local function members_key(n) return prefix .. 'members:' .. n end
local function takeovers_key(name) return prefix .. 'takeovers:' .. name end
local index_key = prefix .. 'index'
local events_key = prefix .. 'events'
local nodes_key = prefix .. 'nodes'
local clock_key = prefix .. 'clock'
local trimmed_key = prefix .. 'trimmed'

-- Fail, before any write, if a key this script writes holds another type.
local function need(...)
  local pairs_ = {...}
  for i = 1, #pairs_, 2 do
    local kind = redis.call('TYPE', pairs_[i]).ok
    if kind ~= 'none' and kind ~= pairs_[i + 1] then
      error('hbloop: ' .. pairs_[i] .. ' is a ' .. kind .. ', not a ' .. pairs_[i + 1])
    end
  end
end

local function policy_arg(i)
  local policy = ARGV[i]
  if policy ~= 'allow' and policy ~= 'refuse' and policy ~= 'replace' then
    error('hbloop: unknown policy ' .. tostring(policy))
  end
  return policy
end

-- Redis' clock, read first by every script: now (ms), and since when presence scripts
-- have run without a gap over half a TTL (the nodes run one every third of a TTL at
-- most, so a longer gap means Redis was stopped or unreachable from every node).
local now, up, gap
local function read_clock()
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local f = redis.call('HMGET', clock_key, 'seen', 'up', 'gap')
  local seen
  seen, up, gap = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]) or 0
  if seen == nil or up == nil or now < seen or now - seen > ttl_ms / 2 then
    gap = seen and math.max(now - seen, 0) or 0
    up = now
  end
end

-- Every command presence sends (the connection's own, then the scripts'), with a key
-- or channel of the kind it uses, for the ACL to judge; the writes first.
local function uses()
  local probe = node_key(node)
  local writes = {
    {'HSET', clock_key, 'f', '1'}, {'HDEL', index_key, 'f'}, {'XADD', events_key, '*', 'f', 'v'},
    {'XTRIM', events_key, 'MINID', '0'}, {'SET', probe, 'v', 'PX', '1', 'XX'},
    {'DEL', members_key(node)}, {'SADD', nodes_key, node}, {'SREM', nodes_key, node},
    {'PEXPIRE', takeovers_key(node), '1'}, {'PUBLISH', prefix .. 'takeover:' .. node, 'n'}}
  local others = {
    {'TIME'}, {'TYPE', probe}, {'HMGET', clock_key, 'f'}, {'HGET', index_key, 'f'},
    {'HEXISTS', index_key, 'f'}, {'HKEYS', index_key}, {'EXISTS', probe},
    {'SISMEMBER', nodes_key, node}, {'SMEMBERS', nodes_key}, {'XLEN', events_key},
    {'XRANGE', events_key, '-', '+'}, {'XREVRANGE', events_key, '+', '-'},
    {'EVALSHA', '0', '0'}, {'EVAL', 'return 0', '0'}, {'SCRIPT', 'LOAD', 'return 0'},
    {'SUBSCRIBE', prefix .. 'takeover:' .. node}, {'PING'}}
  return writes, others
end

-- The commands among these that the ACL denies (none before Redis 7).
local function denied(commands)
  local no = {}
  if redis.acl_check_cmd then
    for _, command in ipairs(commands) do
      if not redis.acl_check_cmd(unpack(command)) then
        no[#no + 1] = command[1] .. (command[2] and (' ' .. command[2]) or '')
      end
    end
  end
  return no
end

-- The first write of every script, after checking that the ACL permits every write
-- presence makes.
local function write_clock()
  local no = denied((uses()))
  if #no > 0 then
    local why = 'NOPERM hbloop: this Redis user may not run ' .. table.concat(no, ', ')
    error(redis.error_reply(why))
  end
  redis.call('HSET', clock_key, 'seen', now, 'up', up, 'gap', gap)
end

-- Has every node had a full TTL of Redis' service to renew its lease? Until then an
-- expired lease proves nothing: no node is reaped, none loses a name for it.
local function fair()
  return now - up >= ttl_ms
end

local function event(...)
  redis.call('XADD', events_key, '*', ...)
end

-- Where the identity key joined last: the node and the name it holds it as (nil if
-- none). An entry of a version that wrote the node alone names the key itself.
local function index_get(key)
  local raw = redis.call('HGET', index_key, key)
  if not raw then return nil, nil end
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' and type(entry[1]) == 'string' then
    return entry[1], entry[2]
  end
  return raw, key
end

-- The node that holds key, and as which name, if it is another node that still lists
-- that name and whose lease holds (or may not be judged yet).
local function live_owner(key)
  local owner, held = index_get(key)
  if owner and owner ~= node and redis.call('HEXISTS', members_key(owner), held) == 1
      and (redis.call('EXISTS', node_key(owner)) == 1 or not fair()) then
    return owner, held
  end
  return nil, nil
end

-- The key a member of node n joined with (its name, for a member of an older version).
local function key_of(n, name)
  local ok, info = pcall(cjson.decode, redis.call('HGET', members_key(n), name))
  return ok and type(info) == 'table' and info.key or name
end

-- When owner's connection of name started (its node's wall clock); 0 if unreadable.
local function since_of(owner, name)
  local ok, info = pcall(cjson.decode, redis.call('HGET', members_key(owner), name))
  return ok and type(info) == 'table' and tonumber(info.since) or 0
end

-- Remove name from n: the member, the index entry if it still points to n and name (a
-- client that reconnected elsewhere first keeps its entry), and a leave event.
local function remove_member(n, name, reason)
  local key = key_of(n, name)
  local owner, held = index_get(key)
  if owner == n and held == name then
    redis.call('HDEL', index_key, key)
  end
  if redis.call('HDEL', members_key(n), name) == 1 then
    event('event', 'leave', 'name', name, 'node', n, 'reason', reason)
    return 1
  end
  return 0
end

-- Make name a member of this node, and the index point to it by key; a join event if
-- new. Under refuse and replace, a look-alike name this node held for key is taken
-- over by it (the node closed that connection for this one, P2).
local function add_member(name, key, address, since)
  local owner, held = index_get(key)
  if owner == node and held ~= name then
    remove_member(node, held, 'taken_over')
  end
  redis.call('HSET', index_key, key, cjson.encode({node, name}))
  local info = cjson.encode({address = address, since = tonumber(since), key = key})
  if redis.call('HSET', members_key(node), name, info) == 1 then
    event('event', 'join', 'name', name, 'node', node, 'address', address, 'since', since)
    return 1
  end
  return 0
end

-- Redis takes name from owner, who hears of it on its channel.
local function take_from(owner, name, reason)
  remove_member(owner, name, reason)
  redis.call('PUBLISH', prefix .. 'takeover:' .. owner, name)
end

-- A name held by two sessions (after a partition) is settled by the policy's rule.
local function conflict(name, kept, lost, policy)
  event('event', 'conflict', 'name', name, 'kept', kept, 'lost', lost, 'policy', policy)
end

-- The reason a member gives up its name to another session, by policy.
local function yielded(policy)
  return policy == 'replace' and 'taken_over' or 'name_taken'
end

local function remove_node(n, names, reason)
  for _, name in ipairs(names) do
    remove_member(n, name, reason)
  end
  redis.call('DEL', members_key(n), node_key(n))
  redis.call('SREM', nodes_key, n)
  return #names
end
"""


def _script(body: str) -> Script:
    return Script(_HELPERS + body)


# ARGV: common three, name, key, address, since, policy, took_local (1: this node closed
# an older connection of key for it), takeover limit, window ms, back-off ms, back-off
# cap ms. Returns {1, previous owner or '', back-off ms} when joined (back-off > 0: this
# takeover started one), {0, owner, back-off ms left} when refused (0: policy refuse),
# {-1} when this node is not registered (it was reaped: it must resync first).
JOIN = _script(
    """
local name, key, address, since, policy = ARGV[4], ARGV[5], ARGV[6], ARGV[7], policy_arg(8)
number(7)
local took_local = number(9) == 1
local limit, window_ms, backoff_ms, backoff_cap_ms = number(10), number(11), number(12), number(13)
local storm_key = takeovers_key(key)
need(clock_key, 'hash', events_key, 'stream', index_key, 'hash', nodes_key, 'set',
     members_key(node), 'hash', storm_key, 'hash')
read_clock()
if redis.call('SISMEMBER', nodes_key, node) == 0 then
  write_clock()
  return {-1}
end
local owner, held = nil, nil
if policy ~= 'allow' then owner, held = live_owner(key) end
if owner and policy == 'refuse' then
  write_clock()
  return {0, owner, 0}
end
local takeover = policy == 'replace' and (owner or took_local)
local storm = {count = 0, start = now, level = -1, till = 0}
if takeover then
  local f = redis.call('HMGET', storm_key, 'count', 'start', 'level', 'until')
  storm = {count = tonumber(f[1]) or 0, start = tonumber(f[2]) or now,
           level = tonumber(f[3]) or -1, till = tonumber(f[4]) or 0}
  if owner and not took_local and now < storm.till then
    write_clock()
    return {0, owner, storm.till - now}
  end
end
write_clock()
local backoff = 0
if takeover then
  if now - storm.start >= window_ms then
    storm.count, storm.start = 0, now
  end
  storm.count = storm.count + 1
  if storm.count > limit then
    storm.level = storm.level + 1
    backoff = math.floor(math.min(backoff_ms * 2 ^ storm.level, backoff_cap_ms))
    storm.till, storm.count, storm.start = now + backoff, 0, now
  end
  redis.call('HSET', storm_key, 'count', storm.count, 'start', storm.start,
             'level', storm.level, 'until', storm.till)
  -- The doubling is forgotten once the name has been calm for a window after it.
  redis.call('PEXPIRE', storm_key, math.max(storm.till - now, 0) + window_ms)
end
if owner then
  take_from(owner, held, 'taken_over')
end
add_member(name, key, address, since)
return {1, owner or '', backoff}
"""
)

# ARGV: common three, then a name and its reason for each member that left (one, or
# a batch of them). Returns how many of them were members.
LEAVE = _script(
    """
need(clock_key, 'hash', events_key, 'stream', index_key, 'hash', members_key(node), 'hash')
read_clock()
write_clock()
local removed = 0
for i = 4, #ARGV - 1, 2 do
  removed = removed + remove_member(node, ARGV[i], ARGV[i + 1])
end
return removed
"""
)

# ARGV: common three, node info. Renews the lease of a registered node. Returns {1, 0}
# if it held, {0, 0} if it had expired (renewed now: the node was not reaped), {-1,
# grace ms} if the node is not registered (reaped, or Redis lost its data): it must
# resync, at once when grace is 0 (it alone was reaped: its members are missing).
HEARTBEAT = _script(
    """
local info = ARGV[4]
need(clock_key, 'hash', node_key(node), 'string', nodes_key, 'set')
read_clock()
write_clock()
if redis.call('SISMEMBER', nodes_key, node) == 0 then
  return {-1, math.max(ttl_ms - (now - up), 0)}
end
if redis.call('SET', node_key(node), info, 'PX', ttl_ms, 'XX') then
  return {1, 0}
end
redis.call('SET', node_key(node), info, 'PX', ttl_ms)
return {0, 0}
"""
)

# ARGV: common three, retention ms, length cap, trim batch. Trims the event stream of
# its oldest events, those older than the retention or past the cap, at most a batch
# of them a run (exact XTRIM MINID, the newest id trimmed kept in ``trimmed``). Then
# removes every node that could have renewed its lease and did not, with its members
# (leave events, reason node_lost). Returns {held ms, gap ms, node, members, ...}:
# held > 0 while reaping waits for every node to have had a full TTL after a gap of
# Redis' service (gap: its length).
REAP = _script(
    """
local retention_ms, maxlen, batch = number(4), number(5), number(6)
need(clock_key, 'hash', events_key, 'stream', index_key, 'hash', nodes_key, 'set',
     trimmed_key, 'string')
read_clock()
local dead = {}
if fair() then
  for _, n in ipairs(redis.call('SMEMBERS', nodes_key)) do
    if redis.call('EXISTS', node_key(n)) == 0 then
      need(members_key(n), 'hash', node_key(n), 'string')
      dead[#dead + 1] = {n, redis.call('HKEYS', members_key(n))}
    end
  end
end
write_clock()
-- Looked up from the stream's old end: an XREVRANGE from the new end walks every
-- newer event (6 ms a run at 50,000 of them, and more as the stream grows).
local before_horizon = string.format('%d', now - retention_ms - 1)
local oldest = redis.call('XRANGE', events_key, '-', before_horizon, 'COUNT', batch)
local over = math.min(redis.call('XLEN', events_key) - maxlen, batch)
if over > #oldest then
  oldest = redis.call('XRANGE', events_key, '-', '+', 'COUNT', over)
end
local newest = oldest[#oldest]
if newest then
  local ms, seq = string.match(newest[1], '^(%d+)-(%d+)$')
  redis.call('XTRIM', events_key, 'MINID', ms .. '-' .. string.format('%d', seq + 1))
  redis.call('SET', trimmed_key, newest[1])
end
if not fair() then
  return {ttl_ms - (now - up), gap}
end
local reaped = {0, gap}
for _, each in ipairs(dead) do
  reaped[#reaped + 1] = each[1]
  reaped[#reaped + 1] = remove_node(each[1], each[2], 'node_lost')
end
return reaped
"""
)

# ARGV: common three, reason. A node's graceful stop. Returns its members.
DEREGISTER = _script(
    """
local reason = ARGV[4]
need(clock_key, 'hash', events_key, 'stream', index_key, 'hash', nodes_key, 'set',
     members_key(node), 'hash', node_key(node), 'string')
read_clock()
local names = redis.call('HKEYS', members_key(node))
write_clock()
return remove_node(node, names, reason)
"""
)

# ARGV: common three, node info, policy, member count n, then n x (name, key, address,
# since), then (name, reason) pairs for members that left while the node could not
# tell Redis.
# Registers the node and makes its members exactly the n given: new ones join (with
# their original since), extra ones leave with their recorded reason. A name another
# node holds is settled by the policy's rule, with a conflict event naming both nodes:
# under refuse the earlier connection (by since) keeps it, under replace the later;
# the holder that loses it hears of it on its channel. Returns {joined, left, won,
# lost names...}: won, names taken from other nodes; lost, this node's that lose.
RESYNC = _script(
    """
local info, policy, n = ARGV[4], policy_arg(5), number(6)
local first = 7
local last = first + 4 * n - 1
if n < 0 or n ~= math.floor(n) or last > #ARGV or (#ARGV - last) % 2 ~= 0 then
  error('hbloop: resync arguments do not match the member count ' .. n)
end
for i = first + 3, last, 4 do
  number(i)
end
need(clock_key, 'hash', events_key, 'stream', index_key, 'hash', nodes_key, 'set',
     members_key(node), 'hash', node_key(node), 'string')
read_clock()
-- Reads and decisions first.
local keep, wins, losses = {}, {}, {}
for i = first, last, 4 do
  local name, key, since = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 3])
  local owner, held = nil, nil
  if policy ~= 'allow' then owner, held = live_owner(key) end
  local mine = true
  if owner then
    local theirs = since_of(owner, held)
    if policy == 'refuse' then mine = since < theirs else mine = since > theirs end
  end
  if mine then
    keep[name] = true
    if owner then wins[#wins + 1] = {name, owner, held} end
  else
    losses[#losses + 1] = {name, owner}
  end
end
local reasons = {}
for i = last + 1, #ARGV, 2 do
  reasons[ARGV[i]] = ARGV[i + 1]
end
for _, loss in ipairs(losses) do
  reasons[loss[1]] = yielded(policy)
end
local gone = {}
for _, name in ipairs(redis.call('HKEYS', members_key(node))) do
  if not keep[name] then gone[#gone + 1] = name end
end
-- Then the writes.
write_clock()
redis.call('SET', node_key(node), info, 'PX', ttl_ms)
redis.call('SADD', nodes_key, node)
local result = {0, 0, #wins}
for _, win in ipairs(wins) do
  take_from(win[2], win[3], yielded(policy))
  conflict(win[1], node, win[2], policy)
end
for _, loss in ipairs(losses) do
  conflict(loss[1], loss[2], node, policy)
  result[#result + 1] = loss[1]
end
for i = first, last, 4 do
  if keep[ARGV[i]] then
    result[1] = result[1] + add_member(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  end
end
for _, name in ipairs(gone) do
  result[2] = result[2] + remove_member(node, name, reasons[name] or 'unknown')
end
return result
"""
)

# ARGV: common three. Writes nothing. Returns the commands presence uses that the ACL
# denies this user, each with the key or channel it was asked about.
CHECK = _script(
    """
local writes, others = uses()
local no = denied(writes)
for _, command in ipairs(denied(others)) do
  no[#no + 1] = command
end
return no
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
        self.clock = prefix + "clock"
        self.trimmed = prefix + "trimmed"

    def node(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def members(self, node: str) -> str:
        return f"{self.prefix}members:{node}"

    def takeover(self, node: str) -> str:
        return f"{self.prefix}takeover:{node}"

    def takeovers(self, key: str) -> str:
        return f"{self.prefix}takeovers:{key}"
