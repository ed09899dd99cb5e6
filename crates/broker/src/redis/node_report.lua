-- Stores one node's stats record, stamped with Redis's own clock (so the
-- readers' ages do not depend on the nodes' clocks agreeing). The hash
-- disappears when no node renews it for the forget time.
--
-- KEYS[1] the nodes' stats hash
-- ARGV[1] node id, ARGV[2] the record, ARGV[3] forget after (ms)
-- Returns the stamp (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now .. ':' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return now
