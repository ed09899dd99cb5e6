-- Parks a record unless another node holds a claim on the session; the
-- holder's own park ends the claim. KEYS: record, claim; ARGV: record
-- text, TTL in ms, the parking node. Returns 1 when stored, 0 when
-- refused.
local held = redis.call('GET', KEYS[2])
if held and held ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if held then redis.call('DEL', KEYS[2]) end
return 1
