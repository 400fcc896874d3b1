"""Every Lua script RedisStorage runs, and the pieces they share.

The record header (``as1:<version>:``, see ``actorsess._record``) is read in
one place, ``stored_version``; versions are compared as digit strings, never
as Lua numbers, which are doubles (``tonumber`` rounds above 2^53, and a write
would then be taken for a replay). Each script handles its keys one by one and
reports a failing key alone, so one poisoned key (a lease key of the wrong
type, say) never aborts the others in its batch.

Reply codes of refused items (``CONFLICT_REASONS``): 1 the lease is held by
another process, 2 storage holds a newer version, 3 the lease key holds a
non-string type.
"""

from __future__ import annotations

from actorsess.storage.base import NEWER_VERSION

CONFLICT_REASONS = {
    1: "the lease is held by another process",
    2: NEWER_VERSION,
    3: "the lease key holds a non-string type (written by something else)",
}

# ``vcmp(a, b)`` orders two versions given as digit strings without leading zeros
# ("" sorts before every version).
# ``stored_version(key)``: the version of the stored record as such a string ("" when
# absent, a tombstone's version for a tombstone), or false when the key holds
# something that is not a record (older than any version: it is overwritten).
# ``put`` writes a record, or a tombstone for "" (kept ``tomb`` ms), unless storage
# holds that version already (a replay: done) or a newer one (returns false).
_COMMON_LUA = """
local function vcmp(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end
local function stored_version(key)
  local head = redis.pcall('GETRANGE', key, 0, 40)
  if type(head) ~= 'string' then return false end
  if head == '' then return '' end
  local digits = string.match(head, '^as1:(%d+):')
  if not digits then return false end
  if #digits > 1 and string.byte(digits) == 48 then  -- '0...': written by something else
    digits = string.gsub(digits, '^0+(%d)', '%1')
  end
  return digits
end
local function put(key, version, value, ttl, tomb)
  local stored = stored_version(key)
  local order = stored and vcmp(stored, version) or -1
  if order > 0 then return false end
  if order < 0 then
    if value == '' then
      redis.call('SET', key, 'as1:' .. version .. ':', 'PX', tomb)
    elseif ttl ~= '0' then
      redis.call('SET', key, value, 'PX', ttl)
    else
      redis.call('SET', key, value)
    end
  end
  return true
end
"""

# ``holds`` (shared ownership): 0 when the lease is held by ``token``, or when it
# lapsed (no lease key at all: it expired while Redis was paused or unreachable,
# or was lost in a restart) and the record is still at ``expected``, the version
# the holder last wrote or loaded: then nobody else can have written it (versions
# never repeat, tombstones keep a deleted key's), so the lease is taken back.
# Otherwise the refusal code (1, or 3 for a lease key of the wrong type).
_LEASE_LUA = """
local function holds(key, lease, token, expected, ms)
  local owner = redis.pcall('GET', lease)
  if type(owner) == 'table' then return 3 end
  if owner == token then return 0 end
  if owner or expected == '' then return 1 end
  local stored = stored_version(key)
  if stored == '' then stored = '0' end  -- what a holder that loaded nothing knows
  if stored ~= expected then return 1 end
  redis.call('SET', lease, token, 'PX', ms)
  return 0
end
"""

LOAD_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then
    value = '\\0actorsess:wrongtype'
  end
  out[i] = value
end
return out
"""

# ARGV: TTL ms ("0": none), tombstone ms, then per key its version and record
# ("" deletes: a tombstone at the version). Every item is fenced (see put).
# Returns {position, 2} pairs of the refused items.
WRITE_LUA = (
    _COMMON_LUA
    + """
local ttl, tomb = ARGV[1], ARGV[2]
local out = {}
for i = 1, #KEYS do
  if not put(KEYS[i], ARGV[2 * i + 1], ARGV[2 * i + 2], ttl, tomb) then
    out[#out + 1] = i
    out[#out + 1] = 2
  end
end
return out
"""
)

# KEYS: (record, lease) pairs. ARGV: lease ms, manager id, channel prefix, then one
# token per pair. A lease that is free, or left by an earlier acquisition of this
# same manager (including one reserved for it), is taken and the record
# returned: {1, record}. Otherwise the owner is asked over pub/sub to hand the
# key over ("w <token> <key>"): {0, owner token}. A lease key of the wrong type:
# {2, ""}.
ACQUIRE_LUA = """
local ms, me, chan = ARGV[1], ARGV[2], ARGV[3]
local mine = me .. ':'
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local owner = redis.pcall('GET', lease)
  if type(owner) == 'table' then
    out[2 * i - 1] = 2
    out[2 * i] = ''
  elseif (not owner) or string.sub(owner, 1, #mine) == mine then
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
    + _LEASE_LUA
    + """
local ms = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease, token = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i]
  if holds(key, lease, token, ARGV[2 * i + 1], ms) == 0 then
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
# none), tombstone ms, then five per pair: token, the space-separated tokens of
# the acquire attempts waiting for the key, and an optional final write: version
# ("" for none), expected version and record ("" deletes). While the lease is
# held (see holds), the final write is made (fenced as in WRITE_LEASED_LUA, so a
# handover costs one call, not a write and a release) and the lease passes to
# the first waiter: it is set to that waiter's token (a reservation its retry
# takes too), or deleted when nobody waits. Then the waiter that got it is sent
# the record ("g <its token> <key length> <key><record>", the key framed by its
# length so that any key survives), so it takes over with no round trip of its
# own, and the other waiters' requests are passed on to it ("w ..."), so they
# need not ask again; without a handover (the lease had moved on) every waiter
# is told "f <key>" and asks again. Returns {position, reason} pairs of refused
# final writes, as WRITE_LEASED_LUA does.
RELEASE_LUA = (
    _COMMON_LUA
    + _LEASE_LUA
    + """
local chan, ms, ttl, tomb = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function manager(token) return string.match(token, '^(.*):%d+$') or token end
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local token, waiters = ARGV[5 * i], ARGV[5 * i + 1]
  local version, expected = ARGV[5 * i + 2], ARGV[5 * i + 3]
  local value = ARGV[5 * i + 4]
  local first = string.match(waiters, '%S+')
  local given, record = nil, nil
  local refusal = holds(key, lease, token, expected, ms)
  if refusal == 0 then
    if version ~= '' and not put(key, version, value, ttl, tomb) then
      out[#out + 1] = i
      out[#out + 1] = 2
    elseif version ~= '' and value ~= '' then
      record = value  -- what storage holds now: no need to read it back
    end
    if first then
      redis.call('SET', lease, first, 'PX', ms)
      given = first
    else
      redis.call('DEL', lease)
    end
  elseif version ~= '' then
    out[#out + 1] = i
    out[#out + 1] = refusal
  end
  for waiter in string.gmatch(waiters, '%S+') do
    if waiter == given then
      if not record then
        record = redis.pcall('GET', key)
        if type(record) ~= 'string' then record = '' end
      end
      local notice = 'g ' .. waiter .. ' ' .. #key .. ' ' .. key .. record
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

# KEYS: (record, lease) pairs. ARGV: TTL in ms ("0": none), lease ms, tombstone
# ms, then per pair the token, the version, the expected version ("" for none)
# and the record ("" deletes). Compare-and-set: a record is written only while
# its lease is held (see holds) and the stored version is older (see put).
# Returns {position, reason} pairs of the refused writes.
WRITE_LEASED_LUA = (
    _COMMON_LUA
    + _LEASE_LUA
    + """
local ttl, ms, tomb = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local token, version = ARGV[4 * i], ARGV[4 * i + 1]
  local expected, value = ARGV[4 * i + 2], ARGV[4 * i + 3]
  local refusal = holds(key, lease, token, expected, ms)
  if refusal ~= 0 then
    out[#out + 1] = i
    out[#out + 1] = refusal
  elseif not put(key, version, value, ttl, tomb) then
    out[#out + 1] = i
    out[#out + 1] = 2
  end
end
return out
"""
)

# KEYS[1]: the key space's owner marker. ARGV: claimant ("mode|host|pid|nonce"), ms.
# Granted (and renewed) when the marker is absent, is the claimant's own, or both
# are shared-mode claimants (processes in shared mode do share a key space): returns
# false. Otherwise returns the holder's value ("?" for a non-string value).
CLAIM_LUA = """
local me, ms = ARGV[1], ARGV[2]
local holder = redis.pcall('GET', KEYS[1])
if type(holder) == 'table' then return '?' end
local shared = 'shared|'
if (not holder) or holder == me
   or (string.sub(holder, 1, #shared) == shared and string.sub(me, 1, #shared) == shared) then
  redis.call('SET', KEYS[1], me, 'PX', ms)
  return false
end
return holder
"""

# KEYS[1]: the owner marker; ARGV[1]: the claimant. Deletes the marker if it is theirs.
UNCLAIM_LUA = """
if redis.pcall('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
