-- Rerun steps of an ended run: new attempts in the same run, history kept (attempt numbers go on).
-- ARGV: 1 prefix, 2 run_id, 3 now, 4 steps to rerun (JSON list, in topological order)
-- Returns: {'running'} when the run has not ended | {'ok', ready entries}
local rid, now = ARGV[2], ARGV[3]
local rk = run_key(rid)
local state = redis.call('HGET', rk, 'state')
if not RUN_DONE[state] then return {'running'} end
local chosen, set = cjson.decode(ARGV[4]), {}
for _, s in ipairs(chosen) do set[s] = true end
-- Reset the chosen steps; count how their kept upstream steps ended.
for _, s in ipairs(chosen) do
  local sk = step_key(rid, s)
  local done, succ, fail = 0, 0, 0
  for _, u in ipairs(cjson.decode(redis.call('HGET', sk, 'upstream'))) do
    if not set[u] then
      local us = redis.call('HGET', step_key(rid, u), 'state')
      done = done + 1
      if us == 'success' then succ = succ + 1 elseif FAILED[us] then fail = fail + 1 end
    end
  end
  local attempt = tonumber(redis.call('HGET', sk, 'attempt'))
  redis.call('HSET', sk, 'state', 'pending', 'up_done', done, 'up_success', succ, 'up_failed', fail,
    'max_attempts', attempt + tonumber(redis.call('HGET', sk, 'retries') or '0') + 1, 'cancel', '0')
  redis.call('HDEL', sk, 'ended_at', 'started_at')
end
-- The run is open again: count what is left and what already failed among the kept steps.
local failed = 0
for _, s in ipairs(cjson.decode(redis.call('HGET', rk, 'steps'))) do
  if not set[s] and FAILED[redis.call('HGET', step_key(rid, s), 'state')] then failed = failed + 1 end
end
redis.call('HSET', rk, 'state', 'running', 'cancel', '0', 'failed', failed, 'unfinished', #chosen, 'handled', '0')
for name, _ in pairs(cjson.decode(redis.call('HGET', rk, 'handlers') or '{}')) do
  redis.call('HSET', step_key(rid, name), 'state', 'pending')
end
redis.call('HDEL', rk, 'ended_at')
redis.call('SADD', K.dag_active(redis.call('HGET', rk, 'dag')), rid)
event(rid, 'run', '', 'rerun', '', now)
local ready = {}
for _, s in ipairs(chosen) do
  local sk = step_key(rid, s)
  if redis.call('HGET', sk, 'state') == 'pending' then
    local decision = decide(rid, sk)
    if decision == 'run' then
      table.insert(ready, queue_step(rid, s, now))
    elseif decision then
      settle(rid, s, decision, now)
      propagate(rid, s, decision, now, ready)
    end
  end
end
maybe_end_run(rid, now, ready)
return {'ok', ready}
