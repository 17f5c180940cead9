-- The reaper: an attempt whose lease expired (its worker died) ends as 'lost'. Fenced twice: the
-- lease must still be expired by Redis's clock (for ``grace`` seconds more: a sweeper that cannot see
-- the attempt's container leaves a worker that can the time to adopt it), and the step must still be
-- running that attempt. An attempt handed over by a stopping worker (hand_over.lua) that nobody
-- adopted ends as 'requeue': it does not count against the step's retries.
-- ARGV: 1 prefix, 2 member (run|step|attempt), 3 now (ISO), 4 retry delay, 5 whether lost counts (1|0),
--       6 grace seconds (optional, default 0)
-- Returns: {'alive'} | {'stale'} | like finish.lua
local m, now = ARGV[2], ARGV[3]
local expiry = redis.call('ZSCORE', K.running(), m)
if not expiry then return {'stale'} end
if tonumber(expiry) + (tonumber(ARGV[6] or '0') or 0) > server_time() then return {'alive'} end
local rid, s, n = string.match(m, '^(.*)|(.*)|(%d+)$')
local sk = step_key(rid, s)
if redis.call('HGET', sk, 'state') ~= 'running' or redis.call('HGET', sk, 'attempt') ~= n then
  redis.call('ZREM', K.running(), m)
  return {'stale'}
end
local ak = attempt_key(rid, s, n)
event(rid, 'step', s, 'lost', n, now)  -- counted by conveyor_attempts_lost_total
if redis.call('HGET', ak, 'handed_over') == '1' then
  redis.call('HSET', ak, 'reason', 'lost',
    'error', 'handed over by a stopping worker, but no worker adopted its container in time')
  return end_attempt(rid, s, n, 'requeue', now, ARGV[4])
end
redis.call('HSET', ak, 'reason', 'lost',
  'error', 'the worker stopped renewing its lease (killed, frozen or cut off) and no worker could adopt its '
    .. 'container; the attempt was declared lost')
return end_attempt(rid, s, n, ARGV[5] == '1' and 'lost' or 'requeue', now, ARGV[4])
