"""The cache's Lua scripts: each runs atomically in Redis, so a read checks an entry against
the current generations, and a store checks them still hold, with nothing in between.

An entry is a hash: `e` the namespace's epoch when it was stored, `w` the workspaces it
depends on ("3,7"), `g` their generations then ("ab12..,cd34.."), `t` its ETag, `b` its
body, `x` its other headers (JSON). It is valid while the epoch and every one of those
generations are unchanged. A caller's facts (taskmanager.cache.callers) are a hash too: `e`,
`u` the user, `g` the user's generation when stored, `w` the workspaces, `f` the roles.

A generation or epoch missing from Redis (never made, or evicted) is made anew, with a random
token no older entry can carry: losing one voids the entries that depended on it.
"""

from __future__ import annotations

# KEYS: the epoch, the user's generation, the caller's facts, then the entries wanted.
# ARGV: the user's id, a fresh token for generations not there yet, the generation keys'
# prefix. Answers {epoch, user generation, facts' workspaces or false, facts' roles or
# false, the current generations of the facts' workspaces (only when an entry missed, for
# storing what the database answers instead) or false, then per entry {workspaces, ETag,
# body, headers} or false}.
READ_ENTRIES = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[1], epoch)
end
local ugen = redis.call('GET', KEYS[2])
if not ugen then
  ugen = ARGV[2]
  redis.call('SET', KEYS[2], ugen)
end
local function current(workspaces)
  local gens = {}
  for id in string.gmatch(workspaces, '[^,]+') do
    local key = ARGV[3] .. id
    local gen = redis.call('GET', key)
    if not gen then
      gen = ARGV[2]
      redis.call('SET', key, gen)
    end
    gens[#gens + 1] = gen
  end
  return table.concat(gens, ',')
end
local facts = redis.call('HMGET', KEYS[3], 'e', 'u', 'g', 'w', 'f')
local workspaces, roles = false, false
if facts[1] == epoch and facts[2] == ARGV[1] and facts[3] == ugen then
  workspaces = facts[4]
  roles = facts[5]
end
local answer = {epoch, ugen, workspaces, roles, false}
local missed = false
for i = 4, #KEYS do
  local entry = redis.call('HMGET', KEYS[i], 'e', 'w', 'g', 't', 'b', 'x')
  local found = false
  if entry[1] == epoch and entry[2] and current(entry[2]) == entry[3] then
    found = {entry[2], entry[4], entry[5], entry[6]}
  end
  if not found then missed = true end
  answer[#answer + 1] = found
end
if missed and workspaces then answer[5] = current(workspaces) end
return answer
"""

# KEYS: the epoch, the entry. ARGV: the epoch read, the TTL, the workspaces, their
# generations read before the database was asked, ETag, body, headers, the generation
# keys' prefix. Stores only if nothing changed since: 1 if stored, else 0.
STORE_ENTRY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local tokens = {}
for gen in string.gmatch(ARGV[4], '[^,]+') do tokens[#tokens + 1] = gen end
local i = 0
for id in string.gmatch(ARGV[3], '[^,]+') do
  i = i + 1
  if redis.call('GET', ARGV[8] .. id) ~= tokens[i] then return 0 end
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'e', ARGV[1], 'w', ARGV[3], 'g', ARGV[4], 't', ARGV[5],
           'b', ARGV[6], 'x', ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: the epoch, the user's generation, the facts. ARGV: the epoch and the user's
# generation read before the database was asked, the user, the workspaces, the roles, the
# TTL. Stores only if neither changed since: 1 if stored, else 0.
STORE_FACTS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'e', ARGV[1], 'u', ARGV[3], 'g', ARGV[2], 'w', ARGV[4], 'f', ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
return 1
"""

# KEYS: generations or the epoch. ARGV: their new token. Allowed when Redis is out of memory
# under `noeviction` (it only overwrites small keys): an invalidation must never be refused
# where a lookup is still answered.
OVERWRITE = """#!lua flags=allow-oom
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[1])
end
return 1
"""
