-- The reaper: an attempt whose lease expired (its worker died) ends as 'lost'. Fenced twice: the
-- lease must still be expired by Redis's clock, and the step must still be running that attempt.
-- ARGV: 1 prefix, 2 member (run|step|attempt), 3 now (ISO), 4 retry delay, 5 whether lost counts (1|0)
-- Returns: {'alive'} | {'stale'} | like finish.lua
local m, now = ARGV[2], ARGV[3]
local expiry = redis.call('ZSCORE', K.running(), m)
if not expiry then return {'stale'} end
if tonumber(expiry) > server_time() then return {'alive'} end
local rid, s, n = string.match(m, '^(.*)|(.*)|(%d+)$')
local sk = step_key(rid, s)
if redis.call('HGET', sk, 'state') ~= 'running' or redis.call('HGET', sk, 'attempt') ~= n then
  redis.call('ZREM', K.running(), m)
  return {'stale'}
end
redis.call('HSET', attempt_key(rid, s, n), 'reason', 'lost',
  'error', 'the worker stopped renewing its lease (killed, frozen or cut off); the attempt was declared lost')
event(rid, 'attempt', s, 'lost', n, now)  -- counted by conveyor_attempts_lost_total
return end_attempt(rid, s, n, ARGV[5] == '1' and 'lost' or 'requeue', now, ARGV[4])
