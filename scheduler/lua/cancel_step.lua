-- Cancel one step of a run: waiting, it is cancelled now (its downstream follow their trigger
-- rules); running, its worker is told to stop it (see the step's 'cancel' flag).
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 now
-- Returns: {'done', state} when it had already ended | {'stopping'} | {'cancelled', ready entries}
local rid, s, now = ARGV[2], ARGV[3], ARGV[4]
local sk = step_key(rid, s)
local state = redis.call('HGET', sk, 'state')
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
