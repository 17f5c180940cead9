-- Move staged attempts whose due time has come onto their RQ queues: a few bulk commands whatever
-- the number of runs (the due ids are the lowest ranks of each queue's staged set). Two callers at
-- once are harmless: each id is moved once.
-- ARGV: 1 prefix, 2 now (epoch seconds, the scheduler's clock), 3 limit per queue,
--       then pairs of (staged set key, RQ queue key), best queue first.  Returns how many moved.
local moved = 0
for q = 4, #ARGV, 2 do
  local due = redis.call('ZRANGEBYSCORE', ARGV[q], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
  local n = #due
  if n > 0 then
    for i = 1, n, 4000 do redis.call('RPUSH', ARGV[q + 1], unpack(due, i, math.min(n, i + 3999))) end
    redis.call('ZREMRANGEBYRANK', ARGV[q], 0, n - 1)
    moved = moved + n
  end
end
return moved
