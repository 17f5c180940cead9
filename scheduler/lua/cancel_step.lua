-- Cancel one step of a run: waiting, it is cancelled now (its downstream follow their trigger
-- rules); running, its worker is told to stop it (see the step's 'cancel' flag).
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 now
-- Returns: {'done', state} when it had already ended | {'stopping'[, ready entries]} | {'cancelled', ready entries}
local rid, s, now = ARGV[2], ARGV[3], ARGV[4]
local sk = step_key(rid, s)
local state = redis.call('HGET', sk, 'state')
if state == 'running' and redis.call('HEXISTS', sk, 'for_each') == 1 then
  -- A mapped step: its waiting instances are cancelled now, its running ones stopped by their workers.
  redis.call('HSET', sk, 'cancel', '1')
  local ready = {}
  local running = cancel_instances(rid, s, now, ready)
  maybe_end_run(rid, now, ready)
  if running > 0 then return {'stopping', ready} end
  return {'cancelled', ready}
end
if state == 'running' then
  redis.call('HSET', sk, 'cancel', '1')
  return {'stopping'}
end
if not STEP_WAITING[state] then return {'done', state or ''} end
local ready = {}
release_pool(rid, s, now, ready)
settle(rid, s, 'cancelled', now)
propagate(rid, s, 'cancelled', now, ready)
maybe_end_run(rid, now, ready)
return {'cancelled', ready}
