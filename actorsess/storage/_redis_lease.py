"""Lua scripts of the shared ownership mode: leases, fenced writes, handover notices.

Every session key ``K`` has a lease key holding the token of the manager that
owns it (``<manager id>:<acquisition number>``), with a PX expiry. The lease
key always hashes to ``K``'s cluster slot, so each script touches one slot
per key pair and a batch splits by slot like the plain scripts.

Handover notices travel over pub/sub, one channel per manager
(``CHANNEL_PREFIX + manager id``): ``w <requester token> <key>`` asks the
owner to write ``K`` and let go of it; ``g <token> <key>\n<record>`` gives
``K`` to the first requester (lease set to its token, record attached);
``f <key>`` tells a requester to ask again. Notices only speed things up; a lost one costs
a retry after a delay.
"""

from __future__ import annotations

from redis.crc import key_slot

from actorsess.exceptions import InvalidKeyError

CHANNEL_PREFIX = "actorsess:lease:"
LEASE_SUFFIX = ":lease"

# Shared by the scripts below. A lease is held by ``token`` when it holds that
# token, or when it lapsed (no lease key at all: it expired while Redis was
# paused or unreachable, or was lost in a restart) and the record is still at
# ``expected``, the version the holder last wrote or loaded: then no other
# process can have written it meanwhile, so the lease is taken back. An absent
# record counts as version 0. ``put`` writes a record (or deletes it, for "")
# unless storage holds that version already (a replay: done) or a newer one
# (returns false).
_COMMON_LUA = """
local function stored_version(key)
  local stored = redis.pcall('GET', key)
  if type(stored) == 'string' then
    return tonumber(string.match(stored, '^as1:(%d+):')) or -1
  end
  if stored then return -1 end
  return 0
end
local function put(key, version, value, ttl)
  local stored = stored_version(key)
  if stored > version then return false end
  if stored < version then
    if value == '' then
      redis.call('DEL', key)
    elseif ttl ~= '0' then
      redis.call('SET', key, value, 'PX', ttl)
    else
      redis.call('SET', key, value)
    end
  end
  return true
end
local function holds(key, lease, token, expected, ms)
  local owner = redis.call('GET', lease)
  if owner == token then return true end
  if owner or not expected or stored_version(key) ~= expected then return false end
  redis.call('SET', lease, token, 'PX', ms)
  return true
end
"""

# KEYS: (record, lease) pairs. ARGV: lease ms, manager id, channel prefix, then one
# token per pair. A lease that is free, or left by an earlier acquisition of this
# same manager (including one reserved for it), is taken and the record
# returned: {1, record}. Otherwise the owner is asked over pub/sub to hand the
# key over ("w <token> <key>"): {0, owner token}.
ACQUIRE_LUA = """
local ms, me, chan = ARGV[1], ARGV[2], ARGV[3]
local mine = me .. ':'
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local owner = redis.call('GET', lease)
  if (not owner) or string.sub(owner, 1, #mine) == mine then
    redis.call('SET', lease, ARGV[3 + i], 'PX', ms)
    local value = redis.pcall('GET', key)
    if type(value) == 'table' and value.err then
      value = '\\0actorsess:wrongtype'
    end
    out[2 * i - 1] = 1
    out[2 * i] = value
  else
    local owner_id = string.match(owner, '^(.*):%d+$') or owner
    redis.call('PUBLISH', chan .. owner_id, 'w ' .. ARGV[3 + i] .. ' ' .. key)
    out[2 * i - 1] = 0
    out[2 * i] = owner
  end
end
return out
"""

# KEYS: (record, lease) pairs. ARGV: lease ms, then per pair the token and the
# expected version. Extends each lease still held (see holds); returns 1
# (renewed) or 0 (lost) per pair.
RENEW_LUA = (
    _COMMON_LUA
    + """
local ms = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease, token = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i]
  if holds(key, lease, token, tonumber(ARGV[2 * i + 1]), ms) then
    redis.call('PEXPIRE', lease, ms)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
)

# KEYS: (record, lease) pairs. ARGV: channel prefix, lease ms, TTL ms ("0":
# none), then five per pair: token, the space-separated tokens of the
# acquire attempts waiting for the key, and an optional final write: version
# ("" for none), expected version and record ("" deletes). While the lease is
# held (see holds),
# the final write is made (compare-and-set on the version as in
# WRITE_LEASED_LUA, so a handover costs one call, not a write and a release)
# and the lease passes to the first waiter: it is set to that waiter's token
# (a reservation its retry takes too), or deleted when nobody waits. Then the
# waiter that got it is sent the record ("g <its token> <key>\n<record>"), so
# it takes over with no round trip of its own, and the other waiters' requests
# are passed on to it ("w ..."), so they need not ask again; without a
# handover (the lease had moved on) every waiter is told "f <key>" and asks
# again. Returns {position, reason} pairs of refused final writes, as
# WRITE_LEASED_LUA does.
RELEASE_LUA = (
    _COMMON_LUA
    + """
local chan, ms, ttl = ARGV[1], ARGV[2], ARGV[3]
local function manager(token) return string.match(token, '^(.*):%d+$') or token end
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local token, waiters = ARGV[5 * i - 1], ARGV[5 * i]
  local version, expected = tonumber(ARGV[5 * i + 1]), tonumber(ARGV[5 * i + 2])
  local value = ARGV[5 * i + 3]
  local first = string.match(waiters, '%S+')
  local given, record = nil, nil
  if holds(key, lease, token, expected, ms) then
    if version and not put(key, version, value, ttl) then
      out[#out + 1] = i
      out[#out + 1] = 2
    elseif version then
      record = value  -- what storage holds now: no need to read it back
    end
    if first then
      redis.call('SET', lease, first, 'PX', ms)
      given = first
    else
      redis.call('DEL', lease)
    end
  elseif version then
    out[#out + 1] = i
    out[#out + 1] = 1
  end
  for waiter in string.gmatch(waiters, '%S+') do
    if waiter == given then
      record = record or redis.call('GET', key) or ''
      local notice = 'g ' .. waiter .. ' ' .. key .. '\\n' .. record
      redis.call('PUBLISH', chan .. manager(waiter), notice)
    elseif given then
      redis.call('PUBLISH', chan .. manager(given), 'w ' .. waiter .. ' ' .. key)
    else
      redis.call('PUBLISH', chan .. manager(waiter), 'f ' .. key)
    end
  end
end
return out
"""
)

# KEYS: (record, lease) pairs. ARGV: TTL in ms ("0": none), lease ms, then per
# pair the token, the version, the expected version ("" for none) and the
# record ("" deletes). Compare-and-set: a record is written only while its
# lease is held (see holds) and the stored version is older. The same version
# already stored is a replay of a write whose outcome was unknown: applied,
# nothing to do. Returns {position, reason} pairs of the refused writes: 1 the
# lease is not ours, 2 storage holds a newer version.
WRITE_LEASED_LUA = (
    _COMMON_LUA
    + """
local ttl, ms = ARGV[1], ARGV[2]
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local token, version = ARGV[4 * i - 1], tonumber(ARGV[4 * i])
  local expected, value = tonumber(ARGV[4 * i + 1]), ARGV[4 * i + 2]
  if not holds(key, lease, token, expected, ms) then
    out[#out + 1] = i
    out[#out + 1] = 1
  elseif not put(key, version, value, ttl) then
    out[#out + 1] = i
    out[#out + 1] = 2
  end
end
return out
"""
)

CONFLICT_REASONS = {1: "the lease is held by another process", 2: "storage holds a newer version"}


def lease_key(key: str) -> str:
    """The lease key of record ``key``, in the same cluster slot.

    A key with a hash tag keeps it (``a{t}b`` -> ``a{t}b:lease``); any other key
    becomes the tag itself (``k`` -> ``{k}:lease``), which hashes like ``k``.
    """
    lease = key + LEASE_SUFFIX if _has_hash_tag(key) else "{" + key + "}" + LEASE_SUFFIX
    if key_slot(lease.encode()) != key_slot(key.encode()):
        raise InvalidKeyError(
            f"session key {key!r} has unbalanced braces, so no lease key can share its "
            "cluster slot; use keys without '{' and '}' or with a complete hash tag"
        )
    return lease


def _has_hash_tag(key: str) -> bool:
    start = key.find("{")
    return start >= 0 and key.find("}", start + 1) > start + 1
