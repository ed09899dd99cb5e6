-- Reads a room's position and its latest history entries, without
-- creating anything (unlike read.lua): a room with no epoch answers {}.
-- Every entry of the stream belongs to the current epoch (publish.lua
-- empties the stream when it starts a new one).
--
-- KEYS[1] room meta hash, KEYS[2] room history stream
-- ARGV[1] most entries to return
-- Returns {} or {epoch, offset, envelope...}, oldest entry first.
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  return {}
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'o'))
local out = {epoch, offset}
local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[1])
for i = #entries, 1, -1 do
  out[#out + 1] = entries[i][2][2]
end
return out
