-- A queued attempt whose `when:` condition is false: the step is skipped instead of run (fenced like
-- start.lua), and its downstream steps follow their trigger rules.
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 attempt, 5 now
-- Returns: {'stale'} | {'done', 'skipped', ready entries}
local rid, s, n, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local sk = step_key(rid, s)
local state = redis.call('HGET', sk, 'state')
if redis.call('HGET', sk, 'attempt') ~= n or (state ~= 'queued' and state ~= 'retrying') then return {'stale'} end
local ready = {}
settle(rid, s, 'skipped', now)
propagate(rid, s, 'skipped', now, ready)
maybe_end_run(rid, now, ready)
return {'done', 'skipped', ready}
