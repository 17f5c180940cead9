-- Move the staged job ids whose due time has come onto their RQ queues: per list (one queue, one due
-- time) one LRANGE, one RPUSH per 4,000 ids and one UNLINK, whatever the number of runs. Two
-- callers at once are harmless: a list is moved once.
-- ARGV: 1 prefix, 2 now (epoch seconds, the scheduler's clock), 3 limit (lists),
--       then pairs of (queue name, RQ queue key).  Returns {ids moved, lists moved}.
local rq = {}
for i = 4, #ARGV, 2 do rq[ARGV[i]] = ARGV[i + 1] end
local lists = redis.call('ZRANGEBYSCORE', K.staged(), '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local moved = 0
for _, m in ipairs(lists) do
  local bar = string.find(m, '|', 1, true)
  local queue = string.sub(m, 1, bar - 1)
  local key = K.staged_list(queue, string.sub(m, bar + 1))
  local ids = redis.call('LRANGE', key, 0, -1)
  for i = 1, #ids, 4000 do redis.call('RPUSH', rq[queue], unpack(ids, i, math.min(#ids, i + 3999))) end
  redis.call('UNLINK', key)
  moved = moved + #ids
end
if #lists > 0 then redis.call('ZREM', K.staged(), unpack(lists)) end
return {moved, #lists}
