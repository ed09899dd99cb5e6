-- Appends one message to a room's history and publishes it, atomically.
--
-- KEYS[1] room meta hash (e = epoch, o = last offset)
-- KEYS[2] room history stream (entry ids are "<offset>-0", field "e")
-- KEYS[3] room channel (declared so a cluster routes it with the keys)
-- ARGV[1] the envelope, encoded with zeros where offset and epoch go
-- ARGV[2] a fresh epoch, used when the room has none (its history was lost)
-- ARGV[3] history length (MAXLEN ~)
-- ARGV[4] history TTL in ms
-- ARGV[5] meta TTL in ms
-- ARGV[6] PUBLISH or SPUBLISH
-- ARGV[7] 1-based position of the 8 offset bytes in the envelope
-- ARGV[8] 1-based position of the 16 epoch bytes in the envelope
-- KEYS[4] (a publish with an idempotency key only) the key's record,
--         "<offset>:<epoch>", in the room's slot
-- ARGV[9] (with KEYS[4]) how long the record is kept, in ms
-- Returns {offset, epoch, 0}, or {offset, epoch, 1} for a key seen within
-- its window: the first publish's answer, nothing stored or published.
if KEYS[4] then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 1}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local n = offset
local be = {}
for i = 8, 1, -1 do
  be[i] = string.char(n % 256)
  n = math.floor(n / 256)
end
local template = ARGV[1]
local op = tonumber(ARGV[7])
local ep = tonumber(ARGV[8])
local envelope = string.sub(template, 1, op - 1) .. table.concat(be)
  .. string.sub(template, op + 8, ep - 1) .. epoch .. string.sub(template, ep + 16)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'e', envelope)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call(ARGV[6], KEYS[3], envelope)
if KEYS[4] then
  redis.call('SET', KEYS[4], offset .. ':' .. epoch, 'PX', ARGV[9])
end
return {offset, epoch, 0}
