-- Move staged attempts whose due time has come onto their RQ queues: a few bulk commands whatever
-- the number of runs (RPUSH and ZREM take up to 1,000 members each). Two callers at once are
-- harmless: each member is moved once.
-- ARGV: 1 prefix, 2 now (epoch seconds, the scheduler's clock), 3 limit.  Returns how many moved.
local due = redis.call('ZRANGEBYSCORE', P .. ':staged', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
if #due == 0 then return 0 end
local by_queue, order = {}, {}
for _, m in ipairs(due) do
  local sp = string.find(m, ' ', 1, true)
  local q = string.sub(m, 1, sp - 1)
  if not by_queue[q] then by_queue[q] = {}; table.insert(order, q) end
  table.insert(by_queue[q], string.sub(m, sp + 1))
end
for _, q in ipairs(order) do
  local ids = by_queue[q]
  for i = 1, #ids, 1000 do redis.call('RPUSH', q, unpack(ids, i, math.min(#ids, i + 999))) end
end
for i = 1, #due, 1000 do redis.call('ZREM', P .. ':staged', unpack(due, i, math.min(#due, i + 999))) end
return #due
