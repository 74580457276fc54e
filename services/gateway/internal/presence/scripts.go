package presence

import "github.com/redis/go-redis/v9"

// The Redis side of presence is a few Lua scripts, each atomic, so that
// "is this user online on another live gateway?" and the announcement that
// follows can never interleave with another gateway's change of the same
// user. Keys (P is the prefix):
//
//	P:presence:gateways         set of gateway ids
//	P:presence:lease:<gateway>  the gateway's lease, with a TTL
//	P:presence:users:<gateway>  hash of the gateway's online users: id -> username
//
// Changes are published on the channel P:presence as
// {"user_id":7,"username":"alice","online":true}; a gateway that found its
// lease gone and wrote its state again publishes {"rebuilt":"<gateway>"}
// there too. User ids are kept as the
// decimal strings Go wrote, never turned into Lua numbers.
//
// ARGV[1] is always the prefix.

// luaCommon defines the helpers every script uses.
const luaCommon = `
local p = ARGV[1]
local function lease(g) return p .. ':presence:lease:' .. g end
local function users(g) return p .. ':presence:users:' .. g end
local gatewaysKey = p .. ':presence:gateways'
local channel = p .. ':presence'
-- live: the ids of the gateways whose lease is alive, except skip.
local function live(skip)
  local out = {}
  for _, g in ipairs(redis.call('SMEMBERS', gatewaysKey)) do
    if g ~= skip and redis.call('EXISTS', lease(g)) == 1 then table.insert(out, g) end
  end
  return out
end
local function onlineOn(gws, uid)
  for _, g in ipairs(gws) do
    if redis.call('HEXISTS', users(g), uid) == 1 then return true end
  end
  return false
end
local function announce(uid, name, online)
  local state = 'false'
  if online then state = 'true' end
  redis.call('PUBLISH', channel, '{"user_id":' .. uid .. ',"username":' .. cjson.encode(name) .. ',"online":' .. state .. '}')
end
`

// applyScript applies one gateway's changes since its last write.
// ARGV: prefix, gateway, the number of users that came online, then id and
// username of each, then the ids of the users that went offline. It returns
// -1 when the gateway's lease is gone (the gateway then writes its whole
// state), else 0.
var applyScript = redis.NewScript(luaCommon + `
local self = ARGV[2]
if redis.call('EXISTS', lease(self)) == 0 then return -1 end
local others = live(self)
local h = users(self)
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  local uid, name = ARGV[i], ARGV[i + 1]
  i = i + 2
  if redis.call('HSET', h, uid, name) == 1 and not onlineOn(others, uid) then announce(uid, name, true) end
end
while i <= #ARGV do
  local uid = ARGV[i]
  i = i + 1
  local name = redis.call('HGET', h, uid)
  if name and redis.call('HDEL', h, uid) == 1 and not onlineOn(others, uid) then announce(uid, name, false) end
end
return 0
`)

// syncScript takes (or renews) the gateway's lease and makes its hash hold
// exactly the given users, announcing each difference that changes whether
// the user is online anywhere. When the lease was missing, the other
// gateways may have announced this gateway's users offline meanwhile (its
// lease lapsed, and they saw it dead, before any sweep removed its hash), so
// every user it has that is not online on another live gateway is
// announced online again; and, unless this is the gateway's first write, a
// notice {"rebuilt":"<gateway>"} on the channel makes every gateway send
// its viewers fresh lists. ARGV: prefix, gateway, lease TTL in
// milliseconds, "1" to send the notice when the lease was missing (else
// "0"), then id and username of every online user. It returns 1 when the
// lease was missing (first start, or Redis lost it), else 0.
var syncScript = redis.NewScript(luaCommon + `
local self = ARGV[2]
local missing = 0
if redis.call('EXISTS', lease(self)) == 0 then missing = 1 end
redis.call('SET', lease(self), '1', 'PX', ARGV[3])
redis.call('SADD', gatewaysKey, self)
local others = live(self)
local h = users(self)
local want = {}
for i = 5, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
local have = {}
local flat = redis.call('HGETALL', h)
for i = 1, #flat, 2 do have[flat[i]] = flat[i + 1] end
for uid, name in pairs(have) do
  if want[uid] == nil then
    redis.call('HDEL', h, uid)
    if not onlineOn(others, uid) then announce(uid, name, false) end
  end
end
for uid, name in pairs(want) do
  if have[uid] == nil then
    redis.call('HSET', h, uid, name)
    if not onlineOn(others, uid) then announce(uid, name, true) end
  elseif missing == 1 and not onlineOn(others, uid) then
    announce(uid, name, true)
  end
end
if missing == 1 and ARGV[4] == '1' then
  redis.call('PUBLISH', channel, '{"rebuilt":' .. cjson.encode(self) .. '}')
end
return missing
`)

// refreshScript extends the gateway's lease. ARGV: prefix, gateway, TTL in
// milliseconds. It returns 0 when the lease is gone (the gateway then
// writes its whole state with syncScript), else 1.
var refreshScript = redis.NewScript(luaCommon + `
local self = ARGV[2]
if redis.call('PEXPIRE', lease(self), ARGV[3]) == 0 then return 0 end
redis.call('SADD', gatewaysKey, self)
return 1
`)

// reapScript removes gateways and announces their users offline unless
// they are online on another live gateway. ARGV: prefix, then a gateway id
// to remove it whatever its lease (a gateway leaving), or nothing to remove
// every gateway whose lease expired. It returns the number removed.
var reapScript = redis.NewScript(luaCommon + `
local targets = {}
if ARGV[2] then
  table.insert(targets, ARGV[2])
else
  for _, g in ipairs(redis.call('SMEMBERS', gatewaysKey)) do
    if redis.call('EXISTS', lease(g)) == 0 then table.insert(targets, g) end
  end
end
for _, g in ipairs(targets) do
  redis.call('DEL', lease(g))
  redis.call('SREM', gatewaysKey, g)
end
local others = live('')
for _, g in ipairs(targets) do
  local flat = redis.call('HGETALL', users(g))
  redis.call('DEL', users(g))
  for i = 1, #flat, 2 do
    if not onlineOn(others, flat[i]) then announce(flat[i], flat[i + 1], false) end
  end
end
return #targets
`)

// onlineScript lists online users: ARGV: prefix, then user ids to check, or
// nothing for every online user. It returns id, username pairs.
var onlineScript = redis.NewScript(luaCommon + `
local gws = live('')
local seen = {}
local out = {}
if #ARGV > 1 then
  local ids = {}
  for i = 2, #ARGV do table.insert(ids, ARGV[i]) end
  for _, g in ipairs(gws) do
    -- unpack takes a bounded number of values: ask in chunks.
    for from = 1, #ids, 1000 do
      local to = math.min(from + 999, #ids)
      local names = redis.call('HMGET', users(g), unpack(ids, from, to))
      for j = 1, to - from + 1 do
        local id, name = ids[from + j - 1], names[j]
        if name and not seen[id] then
          seen[id] = true
          table.insert(out, id)
          table.insert(out, name)
        end
      end
    end
  end
else
  for _, g in ipairs(gws) do
    local flat = redis.call('HGETALL', users(g))
    for i = 1, #flat, 2 do
      if not seen[flat[i]] then
        seen[flat[i]] = true
        table.insert(out, flat[i])
        table.insert(out, flat[i + 1])
      end
    end
  end
end
return out
`)
