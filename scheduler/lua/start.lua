-- A worker claims an attempt. Only the attempt the step is waiting for can start, once (a sensor's
-- attempt again at each poke: 'waiting').
-- The worker takes a lease on it (expiring after the TTL unless renewed: see renew.lua, lose.lua).
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 attempt, 5 now, 6 host, 7 pid, 8 worker name, 9 lease ttl seconds,
--       10 engine id (optional: which container engine runs it; adopters on the same engine may judge it gone)
-- Returns: {'ok', plan_json, plan signature} | {'stale', state, attempt} | {'cancelled'} | {'pooled'} (waits for a slot)
local rid, s, n, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rk, sk = run_key(rid), step_key(rid, s)
local state = redis.call('HGET', sk, 'state')
local current = redis.call('HGET', sk, 'attempt')
if current ~= n or (state ~= 'queued' and state ~= 'retrying' and state ~= 'waiting') then
  return {'stale', state or '', current or ''}
end
if cancel_requested(rid, s) then
  return {'cancelled'}
end
local pool = redis.call('HGET', sk, 'pool')
if pool and pool ~= '' and redis.call('HGET', sk, 'pool_held') ~= '1' then
  -- A step waiting for a pool slot does not hold a worker: it waits in the pool's queue instead.
  local slots = tonumber(redis.call('HGET', K.pools(), pool) or '-1')  -- an undefined pool does not limit
  local need = tonumber(redis.call('HGET', sk, 'pool_slots') or '1')
  local used = tonumber(redis.call('HGET', K.pool_used(), pool) or '0')
  if slots >= 0 and used + need > slots then
    redis.call('ZADD', K.pool_waiting(pool), pool_rank(sk), member(rid, s, n))
    redis.call('ZREM', K.queued(), member(rid, s, n))
    event(rid, 'step', s, 'pool_wait', n, now)
    return {'pooled'}
  end
  redis.call('HINCRBY', K.pool_used(), pool, need)
  redis.call('HSET', sk, 'pool_held', '1')
end
redis.call('HSET', sk, 'state', 'running', 'started_at', now)
redis.call('ZREM', K.queued(), member(rid, s, n))
redis.call('ZADD', K.running(), server_time() + tonumber(ARGV[9]), member(rid, s, n))
redis.call('HSET', attempt_key(rid, s, n), 'number', n, 'state', 'running', 'started_at', now,
  'host', ARGV[6], 'pid', ARGV[7], 'worker', ARGV[8])
if ARGV[10] and ARGV[10] ~= '' then redis.call('HSET', attempt_key(rid, s, n), 'engine_id', ARGV[10]) end
if state == 'waiting' then  -- a sensor's next poke: its new container's output is stored from the log's end on
  redis.call('HSET', attempt_key(rid, s, n), 'poke_log_from', redis.call('HGET', attempt_key(rid, s, n), 'log_bytes') or '0')
end
if redis.call('HGET', rk, 'state') == 'queued' then
  redis.call('HSET', rk, 'state', 'running', 'started_at', now)
  event(rid, 'run', '', 'running', '', now)
end
event(rid, 'step', s, 'running', n, now)
local plan_key = sk
local parent = redis.call('HGET', sk, 'parent')
if parent then plan_key = step_key(rid, parent) end  -- an instance STEP[i] runs its mapped step's plan
return {'ok', redis.call('HGET', plan_key, 'plan'), redis.call('HGET', plan_key, 'plan_sig') or ''}
