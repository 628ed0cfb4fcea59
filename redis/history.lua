#!lua name=tidings
--
-- tidings' per-topic history, a Redis 7 function library.
--
-- This file is a template: redis/history_lib.c fills in the three
-- placeholders of the "baked-in settings" below and the server loads the
-- result with FUNCTION LOAD REPLACE whenever it connects.  docs/history.md
-- describes the design; in short, for the Pub/Sub channel C = <prefix><topic>:
--
--   {C}:meta  hash:   o = offset of the newest message (1, 2, 3, ...)
--                     e = epoch, changes whenever the history may have been lost
--   {C}:hist  stream: entry <offset>-0 holds one field, d = the payload
--
-- Both keys carry the hash tag {C}, so they live on one Redis Cluster slot,
-- the slot of the key the caller declares: KEYS[1] = C.
--
--   FCALL    tidings_publish 1 C payload [maxlen ttl]  -> {offset, epoch}
--   FCALL_RO tidings_history 1 C since limit
--   (or 2 {C}:meta {C}:hist instead of 1 C: the keys declared as they are)
--            -> {epoch or "", top offset or 0, oldest offset held or 0,
--                offset, payload, offset, payload, ...}  (offsets > since)
--   FCALL_RO tidings_info 0  -> {"version", 1, "prefix", P, "maxlen", N, "ttl", N}
--
-- tidings_publish PUBLISHes (SPUBLISHes on a Redis Cluster) on C the envelope
--   "\0tdg1:" <offset in decimal> ":" <epoch> ":" <payload bytes>

-- Baked-in settings.  The prefix is informational (tidings_info): keys and
-- channel come from KEYS[1] alone, so deployments with different prefixes
-- can share one Redis and this one library.
local PREFIX = "__PREFIX__"
local DEFAULT_MAXLEN = __MAXLEN__
local DEFAULT_TTL = __TTL__
-- 'PUBLISH', or 'SPUBLISH' on a Redis Cluster (sharded Pub/Sub)
local PUBLISH = '__PUBLISH__'

local VERSION = 1

local function fail(msg)
  return redis.error_reply('ERR tidings: ' .. msg)
end

-- A non-negative decimal integer argument, or nil.  At most 15 digits, so
-- that a Lua number (a double) holds it exactly.
local function uint(v)
  if type(v) ~= 'string' or #v > 15 or not string.match(v, '^%d+$') then
    return nil
  end
  return tonumber(v)
end

local function keys_of(chan)
  return '{' .. chan .. '}:meta', '{' .. chan .. '}:hist'
end

local B36 = '0123456789abcdefghijklmnopqrstuvwxyz'

local function base36(n)
  local s = ''
  repeat
    local d = n % 36
    s = string.sub(B36, d + 1, d + 1) .. s
    n = (n - d) / 36
  until n == 0
  return s
end

-- A new epoch: <seconds>-<microseconds>-<server>, the first two from the
-- server's clock in base 36, the last the first 12 hex digits of the run_id,
-- which redis-server draws at random each time it starts.  At most 25 bytes,
-- never a ':'.  A later epoch of the same topic differs in its time (the old
-- one was made at least one command earlier) and, after a restart or a
-- failover, in its server part even if the clock went back.  Where an ACL
-- forbids INFO, a number from the script's PRNG stands in for the run_id.
local function new_epoch()
  local t = redis.call('TIME')
  local info = redis.pcall('INFO', 'server')
  local run = type(info) == 'string' and string.match(info, 'run_id:(%x+)')
  if run then
    run = string.sub(run, 1, 12)
  else
    run = base36(math.random(0, 2147483646))
  end
  return base36(tonumber(t[1])) .. '-' .. base36(tonumber(t[2])) .. '-' .. run
end

-- The offset of a stream entry id "<offset>-0".
local function id_offset(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- Forgets the topic's history and starts a new epoch; returns it.
local function restart(meta, hist)
  local epoch = new_epoch()
  redis.call('DEL', meta, hist)
  redis.call('HSET', meta, 'e', epoch)
  return epoch
end

-- The channel and its two keys, from KEYS: the channel alone (1 key: the
-- simple form, for redis-cli), or the keys {C}:meta and {C}:hist (2 keys:
-- what a Redis Cluster needs to be told while the slot migrates).
local function channel_of(keys)
  if #keys == 1 and keys[1] ~= '' then
    local meta, hist = keys_of(keys[1])
    return keys[1], meta, hist
  end
  if #keys == 2 then
    local chan = string.match(keys[1], '^{(.+)}:meta$')
    if chan and keys[2] == '{' .. chan .. '}:hist' then
      return chan, keys[1], keys[2]
    end
  end
  return nil
end

local function publish(keys, args)
  local chan, meta, hist = channel_of(keys)
  if not chan then
    return fail('tidings_publish takes one key, the channel <prefix><topic>, or its two keys')
  end
  if #args ~= 1 and #args ~= 3 then
    return fail('usage: FCALL tidings_publish 1 <channel> <payload> [<maxlen> <ttl>]')
  end
  local maxlen, ttl = DEFAULT_MAXLEN, DEFAULT_TTL
  if #args == 3 then
    maxlen, ttl = uint(args[2]), uint(args[3])
    if not maxlen or maxlen < 1 then
      return fail('maxlen must be a positive integer')
    end
    if not ttl or ttl < 1 then
      return fail('ttl must be a positive integer (seconds)')
    end
  end
  local payload = args[1]
  local maxlen_s, ttl_s = string.format('%d', maxlen), string.format('%d', ttl)

  -- No epoch: a new topic, or its history expired, was deleted or evicted,
  -- or Redis lost it in a restart.  A stream left without its meta belongs
  -- to an older epoch and goes too.
  local epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    epoch = restart(meta, hist)
  end
  local offset = redis.call('HINCRBY', meta, 'o', 1)
  -- Exact trimming (=): the stream holds exactly the last maxlen messages.
  local added = redis.pcall('XADD', hist, 'MAXLEN', '=', maxlen_s,
                            string.format('%d-0', offset), 'd', payload)
  if type(added) == 'table' and added.err then
    -- The stream disagrees with the meta (it holds this offset already, or
    -- is not a stream): only a hand edit or a partial restore does that.
    -- Its messages cannot be trusted to match their offsets: start over.
    epoch = restart(meta, hist)
    offset = redis.call('HINCRBY', meta, 'o', 1)
    redis.call('XADD', hist, 'MAXLEN', '=', maxlen_s, string.format('%d-0', offset), 'd', payload)
  end
  redis.call('EXPIRE', meta, ttl_s)
  redis.call('EXPIRE', hist, ttl_s)
  redis.call(PUBLISH, chan,
             '\0tdg1:' .. string.format('%d', offset) .. ':' .. epoch .. ':' .. payload)
  return {offset, epoch}
end

local function history(keys, args)
  local chan, meta, hist = channel_of(keys)
  if not chan then
    return fail('tidings_history takes one key, the channel <prefix><topic>, or its two keys')
  end
  local since, limit = uint(args[1]), uint(args[2])
  if #args ~= 2 or not since or not limit then
    return fail('usage: FCALL_RO tidings_history 1 <channel> <since> <limit>')
  end
  local m = redis.call('HMGET', meta, 'e', 'o')
  if not m[1] then
    -- no history (a stream without its meta is from a lost epoch)
    return {'', 0, 0}
  end
  local top = tonumber(m[2]) or 0
  local first = 0
  local head = redis.call('XRANGE', hist, '-', '+', 'COUNT', 1)
  if #head > 0 then
    first = id_offset(head[1][1])
  end
  local out = {m[1], top, first}
  if limit > 0 and since < top then
    local from = string.format('%d-0', since + 1)
    local entries = redis.call('XRANGE', hist, from, '+', 'COUNT', string.format('%d', limit))
    for _, entry in ipairs(entries) do
      local fields, payload = entry[2], ''
      for i = 1, #fields - 1, 2 do
        if fields[i] == 'd' then
          payload = fields[i + 1]
        end
      end
      out[#out + 1] = id_offset(entry[1])
      out[#out + 1] = payload
    end
  end
  return out
end

local function info(keys, args)
  return {'version', VERSION, 'prefix', PREFIX, 'maxlen', DEFAULT_MAXLEN, 'ttl', DEFAULT_TTL}
end

redis.register_function{function_name = 'tidings_publish', callback = publish}
redis.register_function{function_name = 'tidings_history', callback = history,
                        flags = {'no-writes'}}
redis.register_function{function_name = 'tidings_info', callback = info, flags = {'no-writes'}}
