-- A worker claims an attempt. Only the attempt the step is waiting for can start, once (a sensor's
-- attempt again at each poke: 'waiting').
-- The worker takes a lease on it (expiring after the TTL unless renewed: see renew.lua, lose.lua).
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 attempt, 5 now, 6 host, 7 pid, 8 worker name, 9 lease ttl seconds,
--       10 engine id (optional: which container engine runs it; adopters on the same engine may judge it gone)
-- Returns: {'ok', plan_json (without its run id), plan signature} | {'stale', state, attempt} | {'cancelled'}
--          | {'pooled'} (waits for a slot)
local rid, s, n, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rk, sk = run_key(rid), step_key(rid, s)
local h = fields(sk, {'attempt', 'cancel', 'rule', 'parent', 'pool_held', 'pool', 'queue', 'pool_slots', 'plan',
  'plan_sig', 'state'})
if h.attempt ~= n or (h.state ~= 'queued' and h.state ~= 'retrying' and h.state ~= 'waiting') then
  return {'stale', h.state or '', h.attempt or ''}
end
if cancel_requested(rid, s, h) then
  return {'cancelled'}
end
if h.pool_held ~= '1' then
  -- A step waiting for a pool slot does not hold a worker: it waits in the pool's queue instead.
  local pool, need = h.pool or ('queue:' .. (h.queue or 'default')), tonumber(h.pool_slots or '1')
  local slots = tonumber(redis.call('HGET', K.pools(), pool) or '-1')  -- an undefined pool does not limit
  if slots >= 0 and tonumber(redis.call('HGET', K.pool_used(), pool) or '0') + need > slots then
    redis.call('ZADD', K.pool_waiting(pool), pool_rank(sk), member(rid, s, n))
    redis.call('ZREM', K.queued(), member(rid, s, n))
    event(rid, 'step', s, 'pool_wait', n, now)
    return {'pooled'}
  end
  redis.call('HINCRBY', K.pool_used(), pool, need)
  redis.call('HSET', sk, 'pool_held', '1', 'state', 'running', 'started_at', now)
else
  redis.call('HSET', sk, 'state', 'running', 'started_at', now)
end
redis.call('ZREM', K.queued(), member(rid, s, n))
redis.call('ZADD', K.running(), server_time() + tonumber(ARGV[9]), member(rid, s, n))
redis.call('HSET', attempt_key(rid, s, n), 'number', n, 'state', 'running', 'started_at', now,
  'host', ARGV[6], 'pid', ARGV[7], 'worker', ARGV[8])
if ARGV[10] and ARGV[10] ~= '' then redis.call('HSET', attempt_key(rid, s, n), 'engine_id', ARGV[10]) end
if h.state == 'waiting' then  -- a sensor's next poke: its new container's output is stored from the log's end on
  redis.call('HSET', attempt_key(rid, s, n), 'poke_log_from', redis.call('HGET', attempt_key(rid, s, n), 'log_bytes') or '0')
end
if redis.call('HGET', rk, 'state') == 'queued' then
  redis.call('HSET', rk, 'state', 'running', 'started_at', now)
  event(rid, 'run', '', 'running', '', now)
end
event(rid, 'step', s, 'running', n, now)
local plan, sig = h.plan, h.plan_sig
if h.parent then plan, sig = unpack(redis.call('HMGET', step_key(rid, h.parent), 'plan', 'plan_sig')) end  -- an instance
return {'ok', plan_text(plan), sig or ''}  -- runs its mapped step's plan
