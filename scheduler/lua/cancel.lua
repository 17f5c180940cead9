-- Cancel a run: steps not yet running are cancelled now; running ones are told to stop
-- (their workers see the flag and end the attempt as cancelled).
-- ARGV: 1 prefix, 2 run_id, 3 now
-- Returns: {'done', state} when the run had already ended | {'ok', running_count, ready entries...}
local rid, now = ARGV[2], ARGV[3]
local rk = run_key(rid)
local state = redis.call('HGET', rk, 'state')
if state == 'success' or state == 'failed' or state == 'cancelled' then return {'done', state} end
redis.call('HSET', rk, 'cancel', '1')
redis.call('LREM', P .. ':dag:' .. redis.call('HGET', rk, 'dag') .. ':waiting', 0, rid)
local running = 0
for _, s in ipairs(cjson.decode(redis.call('HGET', rk, 'steps'))) do
  local st = redis.call('HGET', step_key(rid, s), 'state')
  if st == 'pending' or st == 'queued' or st == 'retrying' then settle(rid, s, 'cancelled', now)
  elseif st == 'running' then running = running + 1 end
end
local ready = {}
maybe_end_run(rid, now, ready)
return {'ok', running, ready}
