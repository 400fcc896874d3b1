"""Every Lua script RedisStorage runs, and the pieces they share.

The record header (``as1:<version>:``, or ``as1:<version>/<stamp>:`` in
partitioned mode; see ``actorsess._record``) is read in one place,
``stored_version``; versions are compared as digit strings, never as Lua
numbers, which are doubles (``tonumber`` rounds above 2^53, and a write would
then be taken for a replay). Each script handles its keys one by one and
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
# ``put`` writes a record, or a tombstone for "" (kept ``tomb`` ms; ``dead``: the
# record given is a tombstone, kept as long), unless storage holds a newer version
# (returns false; the same version again is a replay, done).
COMMON_LUA = """
local function vcmp(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end
local function parse_version(record)
  local digits = string.match(record, '^as1:(%d+)[:/]')
  if digits and #digits > 1 and string.byte(digits) == 48 then
    digits = string.gsub(digits, '^0+(%d)', '%1')
  end
  return digits
end
local function set_record(key, record, px)
  if px ~= '0' then
    return redis.pcall('SET', key, record, 'PX', px, 'GET')
  end
  return redis.pcall('SET', key, record, 'GET')
end
local function read_record(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then
    return '\\0actorsess:wrongtype'  -- another type: reported as such, not as absent
  end
  return value
end
local function stored_version(key)
  local head = redis.pcall('GETRANGE', key, 0, 40)
  if type(head) ~= 'string' then return false end
  if head == '' then return '' end
  return parse_version(head) or false
end
local function put(key, version, value, ttl, tomb, dead)
  local record, px = value, ttl
  if value == '' then record, px = 'as1:' .. version .. ':', tomb
  elseif dead then px = tomb end
  -- One command in the common case: write, and get back what was there.
  local old = set_record(key, record, px)
  if type(old) == 'table' then  -- not a string (a list, say): SET GET refuses it
    redis.call('DEL', key)
    set_record(key, record, px)
    return true
  end
  if not old then return true end
  local stored = parse_version(old)
  if stored and vcmp(stored, version) > 0 then
    -- Storage held a newer version: put it back (refusals are rare: a late write, or
    -- another writer). Its remaining lifetime is not known here, so it gets a full
    -- one: a tombstone's, or the configured TTL.
    local restore = ttl
    if string.find(old, ':', 5, true) == #old then restore = tomb end  -- all header
    set_record(key, old, restore)
    return false
  end
  return true
end
"""

# Leases (shared ownership). A lease key holds ``<token>|<until>[|<claim>]``:
# the owner's token and, in Redis server time (ms), until when the lease is
# good. The key itself lives ``LINGER_MS`` longer than that, so that a lease
# which lapsed while Redis was paused (time runs on in a stopped server) is
# still there when it resumes: a lapsed lease is not free. Another manager that
# wants it asks the owner to hand it over, as for a live lease, and records its
# claim ``<its token>@<time>``; it takes the lease only when the owner has
# neither renewed nor released it for a grace period (the lease time) after the
# claim. A live owner answers within that (its renewal clears the claim, its
# handover writes its last changes first), so a pause of Redis or the network
# loses nothing; only an owner that is really gone loses its unwritten window.
#
# ``holds``: 0 when the lease holds ``token`` (lapsed or not: nobody has taken
# it), or when there is no lease key at all (it expired after a long outage or
# was lost in a restart) and the record is still at ``expected``, the version
# the holder last wrote or loaded: then nobody else can have written it
# (versions never repeat, tombstones keep a deleted key's), so the lease is
# taken back. Otherwise the refusal code (1, or 3 for a lease key of the wrong
# type).
_LEASE_LUA = """
local LINGER_MS = 60000
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- token, until (ms), claim ('' for none); false for a wrong-typed key; nil if absent.
local function read_lease(lease)
  local value = redis.pcall('GET', lease)
  if type(value) == 'table' then return false end
  if not value then return nil end
  local token, till, claim = string.match(value, '^([^|]*)|(%d+)|?(.*)$')
  if not token then return value, 0, '' end  -- not ours to read: counts as lapsed
  return token, tonumber(till), claim
end
local function set_lease(lease, token, ms)
  local till = now_ms() + tonumber(ms)
  redis.call('SET', lease, token .. '|' .. till, 'PX', tonumber(ms) + LINGER_MS)
end
local function holds(key, lease, token, expected, ms)
  local owner = read_lease(lease)
  if owner == false then return 3 end
  if owner == token then return 0 end
  if owner or expected == '' then return 1 end
  local stored = stored_version(key)
  if stored == '' then stored = '0' end  -- what a holder that loaded nothing knows
  if stored ~= expected then return 1 end
  set_lease(lease, token, ms)
  return 0
end
"""

LOAD_LUA = (
    COMMON_LUA
    + """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = read_record(key)
end
return out
"""
)

# ARGV: TTL ms ("0": none), tombstone ms, then per key its version and record
# ("" deletes: a tombstone at the version). Every item is fenced (see put).
# Returns {position, 2} pairs of the refused items.
WRITE_LUA = (
    COMMON_LUA
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

# The same arguments and reply as WRITE_LUA, all or nothing: if storage holds a
# newer version of any key, nothing is written and the refused items are returned.
# (A script runs alone on its node, so no other write comes between the check and
# the writes.)
WRITE_ALL_LUA = (
    COMMON_LUA
    + """
local ttl, tomb = ARGV[1], ARGV[2]
local out = {}
for i = 1, #KEYS do
  local stored = stored_version(KEYS[i])
  if stored and vcmp(stored, ARGV[2 * i + 1]) > 0 then
    out[#out + 1] = i
    out[#out + 1] = 2
  end
end
if #out > 0 then return out end
for i = 1, #KEYS do
  put(KEYS[i], ARGV[2 * i + 1], ARGV[2 * i + 2], ttl, tomb)
end
return out
"""
)

# KEYS: (record, lease) pairs. ARGV: lease ms, manager id, channel prefix, then one
# token per pair. A lease that is free, or held by an earlier acquisition of this
# same manager (including one reserved for it), or lapsed and claimed by this
# token longer than the grace period (the lease time) ago, is taken and the
# record returned: {1, record}. Otherwise the owner is asked over pub/sub to hand
# the key over ("w <token> <key>"), a lapsed lease's claim is recorded, and
# {0, owner token} returned. A lease key of the wrong type: {2, ""}.
ACQUIRE_LUA = (
    COMMON_LUA
    + _LEASE_LUA
    + """
local ms, me, chan = ARGV[1], ARGV[2], ARGV[3]
local mine = me .. ':'
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease, token = KEYS[2 * i - 1], KEYS[2 * i], ARGV[3 + i]
  local owner, till, claim = read_lease(lease)
  local take = false
  if owner == false then
    out[2 * i - 1] = 2
    out[2 * i] = ''
  elseif (not owner) or string.sub(owner, 1, #mine) == mine then
    take = true
  else
    local now = now_ms()
    if now >= till then
      local claimant, since = string.match(claim, '^(.*)@(%d+)$')
      since = since and tonumber(since)
      if claimant == token and now >= since + tonumber(ms) then
        take = true
      elseif claimant ~= token and (not since or now >= since + 2 * tonumber(ms)) then
        -- No claim yet, or one its claimant stopped pursuing: ours from now.
        redis.call('SET', lease, owner .. '|' .. till .. '|' .. token .. '@' .. now,
                   'KEEPTTL')
      end
    end
    if not take then
      local owner_id = string.match(owner, '^(.*):%d+$') or owner
      redis.call('PUBLISH', chan .. owner_id, 'w ' .. token .. ' ' .. key)
      out[2 * i - 1] = 0
      out[2 * i] = owner
    end
  end
  if take then
    set_lease(lease, token, ms)
    out[2 * i - 1] = 1
    out[2 * i] = read_record(key)
  end
end
return out
"""
)

# KEYS: (record, lease) pairs. ARGV: lease ms, then per pair the token and the
# expected version. Extends each lease still held (see holds); returns 1
# (renewed) or 0 (lost) per pair.
RENEW_LUA = (
    COMMON_LUA
    + _LEASE_LUA
    + """
local ms = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease, token = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i]
  if holds(key, lease, token, ARGV[2 * i + 1], ms) == 0 then
    set_lease(lease, token, ms)  -- also clears a claim: the owner is alive
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
    COMMON_LUA
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
      set_lease(lease, first, ms)
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
    COMMON_LUA
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

# The same arguments and reply as WRITE_LEASED_LUA, all or nothing: every item's
# lease and version fence is checked first; if any is refused, nothing is written.
WRITE_LEASED_ALL_LUA = (
    COMMON_LUA
    + _LEASE_LUA
    + """
local ttl, ms, tomb = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local token, version, expected = ARGV[4 * i], ARGV[4 * i + 1], ARGV[4 * i + 2]
  local refusal = holds(key, lease, token, expected, ms)
  if refusal == 0 then
    local stored = stored_version(key)
    if stored and vcmp(stored, version) > 0 then refusal = 2 end
  end
  if refusal ~= 0 then
    out[#out + 1] = i
    out[#out + 1] = refusal
  end
end
if #out > 0 then return out end
for i = 1, #KEYS / 2 do
  put(KEYS[2 * i - 1], ARGV[4 * i + 1], ARGV[4 * i + 3], ttl, tomb)
end
return out
"""
)

# KEYS[1]: the key space's owner marker. ARGV: claimant ("mode|host|pid|nonce"), ms.
# Granted (and renewed) when the marker is absent, is the claimant's own, or both
# claimants are of one sharing mode (processes in shared mode share a key space, and
# so do those in partitioned mode; the two modes never mix): returns
# false. Otherwise returns the holder's value ("?" for a non-string value).
CLAIM_LUA = """
local me, ms = ARGV[1], ARGV[2]
local holder = redis.pcall('GET', KEYS[1])
if type(holder) == 'table' then return '?' end
-- Processes of one sharing mode ('shared', 'partitioned') claim a space together.
local mode = string.match(me, '^([^|]*)|')
if (not holder) or holder == me
   or (mode ~= 'local' and string.match(holder, '^([^|]*)|') == mode) then
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
