-- Cancel a run: steps not yet running are cancelled now; running ones are told to stop
-- (their workers see the flag and end the attempt as cancelled). Steps with trigger_rule 'always' are
-- cleanup: they still run once their upstream steps are done, like a finally block.
-- ARGV: 1 prefix, 2 run_id, 3 now
-- Returns: {'done', state} when the run had already ended | {'ok', running_count, ready entries...}
local rid, now = ARGV[2], ARGV[3]
local rk = run_key(rid)
local state = redis.call('HGET', rk, 'state')
if RUN_DONE[state] then return {'done', state} end
redis.call('HSET', rk, 'cancel', '1')
redis.call('LREM', K.dag_waiting(redis.call('HGET', rk, 'dag')), 0, rid)
local running = 0
local ready = {}
for _, s in ipairs(cjson.decode(redis.call('HGET', rk, 'steps'))) do
  local sk = step_key(rid, s)
  local st = redis.call('HGET', sk, 'state')
  if st == 'running' and redis.call('HEXISTS', sk, 'for_each') == 1 then
    running = running + cancel_instances(rid, s, now, ready)  -- a mapped step: its instances
  elseif STEP_WAITING[st] and redis.call('HGET', sk, 'rule') ~= 'always' then
    release_pool(rid, s, now, ready)
    settle(rid, s, 'cancelled', now)
    propagate(rid, s, 'cancelled', now, ready)  -- 'always' steps (cleanup) still run once upstream is done
  elseif st == 'running' then running = running + 1 end
end
maybe_end_run(rid, now, ready)
return {'ok', running, ready}
