-- One session's take (every take of ParkedRecords::take_many (parked.rs)): the
-- claim, when one is asked (`SET … GET`: the claim replaced, if another
-- node's, is answered as displaced), then the record, taken unless it
-- equals the one to keep, which is read and left in place. With a token,
-- the answer is also kept for a while in the record's slot, and the same
-- token asking again gets it back, touching nothing else: a record taken
-- by a request whose answer was lost is not lost with it. KEYS: record,
-- claim, kept answer; ARGV: token ('' for none), claiming node ('' for
-- none), claim TTL in ms, record text to keep ('' for none), answer TTL
-- in ms. Returns {displaced node, record, 1 when repeated}.
if ARGV[1] ~= '' then
  local was = redis.call('GET', KEYS[3])
  if was then
    was = cjson.decode(was)
    if was[1] == ARGV[1] then return {was[2], was[3], 1} end
  end
end
local displaced = false
if ARGV[2] ~= '' then
  local held = redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3], 'GET')
  if held and held ~= ARGV[2] then displaced = held end
end
local found = redis.call('GET', KEYS[1])
if found and found ~= ARGV[4] then redis.call('DEL', KEYS[1]) end
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[3], cjson.encode({ARGV[1], displaced, found}), 'PX', ARGV[5])
end
return {displaced, found, 0}
