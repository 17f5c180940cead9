-- Shared helpers, prepended to every script below (Redis runs each script atomically).
-- Every script takes ARGV[1] = key prefix and builds keys like scheduler/keys.py does.
-- Not Redis Cluster safe by design: one run's keys are computed inside the script.
local P = ARGV[1]
local function run_key(rid) return P .. ':run:' .. rid end
local function step_key(rid, s) return P .. ':run:' .. rid .. ':step:' .. s end
local function attempt_key(rid, s, n) return P .. ':run:' .. rid .. ':step:' .. s .. ':a:' .. n end

local function event(rid, kind, step, state, attempt, now)
  redis.call('XADD', P .. ':events', 'MAXLEN', '~', 10000, '*',
    'run', rid, 'kind', kind, 'step', step or '', 'state', state or '', 'attempt', attempt or '', 'at', now)
end

-- Queue a step's first attempt; returns the entry the caller enqueues on RQ.
local function queue_step(rid, s, now)
  local sk = step_key(rid, s)
  redis.call('HSET', sk, 'state', 'queued', 'attempt', 1, 'queued_at', now)
  event(rid, 'step', s, 'queued', '1', now)
  return {rid, s, '1', redis.call('HGET', sk, 'queue'), redis.call('HGET', sk, 'timeout') or ''}
end

-- Take one of the DAG's active slots and queue the run's root steps.
local function activate(rid, now, ready)
  local rk = run_key(rid)
  redis.call('SADD', P .. ':dag:' .. redis.call('HGET', rk, 'dag') .. ':active', rid)
  for _, s in ipairs(cjson.decode(redis.call('HGET', rk, 'roots'))) do
    table.insert(ready, queue_step(rid, s, now))
  end
end

-- Start a run now, or make it wait for one of its DAG's max_active_runs slots.
local function start_or_wait(rid, now, ready)
  local rk = run_key(rid)
  local dag = redis.call('HGET', rk, 'dag')
  local limit = tonumber(redis.call('HGET', rk, 'max_active') or '0')
  if limit > 0 and redis.call('SCARD', P .. ':dag:' .. dag .. ':active') >= limit then
    redis.call('RPUSH', P .. ':dag:' .. dag .. ':waiting', rid)
    event(rid, 'run', '', 'waiting', '', now)
    return
  end
  activate(rid, now, ready)
end

-- Mark a step terminal and count it against the run.
local function settle(rid, s, state, now)
  local sk = step_key(rid, s)
  redis.call('HSET', sk, 'state', state)
  if not redis.call('HGET', sk, 'ended_at') then redis.call('HSET', sk, 'ended_at', now) end
  local rk = run_key(rid)
  redis.call('HINCRBY', rk, 'unfinished', -1)
  if state == 'failed' or state == 'upstream_failed' then redis.call('HINCRBY', rk, 'failed', 1) end
  event(rid, 'step', s, state, redis.call('HGET', sk, 'attempt'), now)
end

-- Steps downstream of a failed or cancelled one can never run: settle them too.
local function settle_downstream(rid, s, state, now)
  local todo = cjson.decode(redis.call('HGET', step_key(rid, s), 'downstream'))
  while #todo > 0 do
    local d = table.remove(todo)
    if redis.call('HGET', step_key(rid, d), 'state') == 'pending' then
      settle(rid, d, state, now)
      for _, dd in ipairs(cjson.decode(redis.call('HGET', step_key(rid, d), 'downstream'))) do
        table.insert(todo, dd)
      end
    end
  end
end

-- End the run once no step is left; hand its active slot to the next waiting run.
local function maybe_end_run(rid, now, ready)
  local rk = run_key(rid)
  if tonumber(redis.call('HGET', rk, 'unfinished')) > 0 then return end
  local state = 'success'
  if redis.call('HGET', rk, 'cancel') == '1' then state = 'cancelled'
  elseif tonumber(redis.call('HGET', rk, 'failed') or '0') > 0 then state = 'failed' end
  redis.call('HSET', rk, 'state', state, 'ended_at', now)
  event(rid, 'run', '', state, '', now)
  local dag = redis.call('HGET', rk, 'dag')
  if redis.call('SREM', P .. ':dag:' .. dag .. ':active', rid) == 1 then
    while true do
      local nxt = redis.call('LPOP', P .. ':dag:' .. dag .. ':waiting')
      if not nxt then break end
      if redis.call('HGET', run_key(nxt), 'state') == 'queued' then
        activate(nxt, now, ready)
        break
      end
    end
  end
end
