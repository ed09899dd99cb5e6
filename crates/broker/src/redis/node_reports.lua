-- Every node's stats record with its age by Redis's clock; records older
-- than the forget time (nodes that stopped reporting) are removed.
--
-- KEYS[1] the nodes' stats hash
-- ARGV[1] forget after (ms)
-- Returns {node, age_ms, record, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local forget = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local value = all[i + 1]
  local sep = string.find(value, ':', 1, true)
  local at = sep and tonumber(string.sub(value, 1, sep - 1))
  if not at or now - at > forget then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]
    out[#out + 1] = math.max(0, now - at)
    out[#out + 1] = string.sub(value, sep + 1)
  end
end
return out
