-- Reads a room's position and, when asked, the history after an offset,
-- atomically (so the entries returned are exactly those up to the position).
--
-- KEYS[1] room meta hash, KEYS[2] room history stream
-- ARGV[1] a fresh epoch, used when the room has none
-- ARGV[2] meta TTL in ms
-- ARGV[3] offset to read after, or -1 for the position only
-- ARGV[4] the epoch that offset belongs to
-- Returns {epoch, offset, envelope...}.
local epoch = redis.call('HGET', KEYS[1], 'e')
local offset = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
else
  offset = tonumber(redis.call('HGET', KEYS[1], 'o'))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local since = tonumber(ARGV[3])
local out = {epoch, offset}
if since < 0 or ARGV[4] ~= epoch or since >= offset then
  return out
end
local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', offset .. '-0')
for _, entry in ipairs(entries) do
  out[#out + 1] = entry[2][2]
end
return out
