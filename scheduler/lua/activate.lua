-- Start a newly created run, or make it wait for max_active_runs.
-- ARGV: 1 prefix, 2 run_id, 3 now (ISO 8601)
-- Returns: ready entries {run_id, step, attempt, queue, timeout} to enqueue on RQ.
local rid, now = ARGV[2], ARGV[3]
local rk = run_key(rid)
if redis.call('HGET', rk, 'state') ~= 'queued' then return {} end
local dag = redis.call('HGET', rk, 'dag')
local limit = tonumber(redis.call('HGET', rk, 'max_active') or '0')
if limit > 0 and redis.call('SCARD', P .. ':dag:' .. dag .. ':active') >= limit then
  redis.call('RPUSH', P .. ':dag:' .. dag .. ':waiting', rid)
  event(rid, 'run', '', 'waiting', '', now)
  return {}
end
local ready = {}
activate(rid, now, ready)
return ready
