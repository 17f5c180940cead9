-- An attempt ended. Fenced: a result for any attempt but the running one is ignored.
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 attempt, 5 outcome (success|failed|cancelled), 6 now,
--       7 retry delay in seconds, 8.. attempt record as field, value pairs
-- Returns: {'stale'} | {'retry', next_attempt, queue, timeout} | {'done', state, ready entries...}
local rid, s, n, outcome, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local rk, sk = run_key(rid), step_key(rid, s)
if redis.call('HGET', sk, 'state') ~= 'running' or redis.call('HGET', sk, 'attempt') ~= n then
  return {'stale'}
end
local record = {}
for i = 8, #ARGV, 2 do table.insert(record, ARGV[i]); table.insert(record, ARGV[i + 1]) end
if #record > 0 then redis.call('HSET', attempt_key(rid, s, n), unpack(record)) end
redis.call('HSET', attempt_key(rid, s, n), 'state', outcome, 'ended_at', now)

local cancelled = redis.call('HGET', rk, 'cancel') == '1'
local new = outcome
if cancelled or outcome == 'cancelled' then new = 'cancelled'
elseif outcome == 'failed' and tonumber(n) < tonumber(redis.call('HGET', sk, 'max_attempts')) then
  local nxt = tonumber(n) + 1
  redis.call('HSET', sk, 'state', 'retrying', 'attempt', nxt, 'retry_in', ARGV[7])
  event(rid, 'step', s, 'retrying', tostring(nxt), now)
  return {'retry', tostring(nxt), redis.call('HGET', sk, 'queue'), redis.call('HGET', sk, 'timeout') or ''}
end

local ready = {}
settle(rid, s, new, now)
if new == 'success' then
  for _, d in ipairs(cjson.decode(redis.call('HGET', sk, 'downstream'))) do
    local dk = step_key(rid, d)
    if redis.call('HINCRBY', dk, 'waiting', -1) <= 0 and redis.call('HGET', dk, 'state') == 'pending' then
      table.insert(ready, queue_step(rid, d, now))
    end
  end
else
  settle_downstream(rid, s, new == 'cancelled' and 'cancelled' or 'upstream_failed', now)
end
maybe_end_run(rid, now, ready)
return {'done', new, ready}
