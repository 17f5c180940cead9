-- A worker adopts a running attempt whose lease expired: its worker died, but its container is still
-- there (running, or exited and not removed). The SAME attempt is leased to the adopter, which follows
-- the container to its end: nothing runs a second time. Fenced twice, like lose.lua: the lease must
-- still be expired by Redis's clock (so of two adopters only the first wins: it renews the lease), and
-- the step must still be running that attempt.
-- ARGV: 1 prefix, 2 member (run|step|attempt), 3 now (ISO), 4 adopter (worker name), 5 lease ttl seconds,
--       6 container id (or '')
-- Returns: {'ok', plan_json, log bytes of this container, started_at, plan signature} | {'alive'} | {'stale'}
local m, now, adopter = ARGV[2], ARGV[3], ARGV[4]
local expiry = redis.call('ZSCORE', K.running(), m)
if not expiry then return {'stale'} end
if tonumber(expiry) > server_time() then return {'alive'} end
local rid, s, n = string.match(m, '^(.*)|(.*)|(%d+)$')
local sk, ak = step_key(rid, s), attempt_key(rid, s, n)
if redis.call('HGET', sk, 'state') ~= 'running' or redis.call('HGET', sk, 'attempt') ~= n then
  return {'stale'}
end
redis.call('ZADD', K.running(), server_time() + tonumber(ARGV[5]), m)
local previous = holder_of(ak)  -- '' after a hand-over
redis.call('HSET', ak, 'holder', adopter, 'adopted_by', adopter, 'adopted_at', now, 'handed_over', '0',
  'adopted_from', previous,
  'adoption_history', (redis.call('HGET', ak, 'adoption_history') or '') .. previous .. '>' .. adopter .. '@' .. now .. ';')
if ARGV[6] ~= '' then redis.call('HSET', ak, 'container_id', ARGV[6]) end
redis.call('HINCRBY', ak, 'adoptions', 1)
event(rid, 'step', s, 'adopted', n, now)
local plan_key = sk
local parent = redis.call('HGET', sk, 'parent')
if parent then plan_key = step_key(rid, parent) end  -- an instance STEP[i] runs its mapped step's plan
-- How much of THIS container's output is stored: a sensor's attempt logs every poke, each its own container.
local logged = redis.call('HMGET', ak, 'log_bytes', 'poke_log_from')
local plan = redis.call('HMGET', plan_key, 'plan', 'plan_sig')
return {'ok', plan_text(plan[1]), tostring(tonumber(logged[1] or '0') - tonumber(logged[2] or '0')),
        redis.call('HGET', ak, 'started_at') or '', plan[2] or ''}
