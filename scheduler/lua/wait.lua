-- A step with wait_for is about to start: have the other DAGs' runs (or steps of them) it waits for
-- reached the states it wants? If so the worker goes on to start.lua. If not, the attempt waits in Redis
-- (state 'waiting', holding no worker; the caller parks it in the delayed set) and is checked again after
-- the shortest interval of what it still waits for; past that entry's timeout (counted from the first
-- check) the step fails with reason wait_timeout, without retries.
-- Each wait_for entry: {dag, step ('' = the whole run), logical_date ('same' | 'latest'), state, timeout,
-- interval}. 'same': the run of that DAG with the waiting run's logical date (its fire, else the latest
-- such run); 'latest': that DAG's latest run.
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 attempt, 5 now (ISO)
-- Returns: {'go'} | {'stale'} | {'waiting', {ready entry}, interval, checks} | {'done', 'failed', ready entries}
local rid, s, n, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local sk = step_key(rid, s)
local state = redis.call('HGET', sk, 'state')
if redis.call('HGET', sk, 'attempt') ~= n or not (state == 'queued' or state == 'retrying' or state == 'waiting') then
  return {'stale'}
end
if cancel_requested(rid, s) then return {'go'} end  -- start.lua settles it
local waits = cjson.decode(redis.call('HGET', sk, 'wait_for') or '[]')
local fire = fire_date(rid)
local t = server_time()
local ak = attempt_key(rid, s, n)
redis.call('HSETNX', ak, 'wait_since', t)
local since = tonumber(redis.call('HGET', ak, 'wait_since'))

local function awaited_run(w)
  if w['logical_date'] == 'latest' then
    return redis.call('ZREVRANGE', K.dag_runs(w['dag']), 0, 0)[1]
  end
  local found = redis.call('HGET', K.dag_fires(w['dag']), fire)
  if found then return found end
  for _, other in ipairs(redis.call('ZREVRANGE', K.dag_runs(w['dag']), 0, 199)) do
    if fire_date(other) == fire then return other end
  end
  return nil
end

local pending, interval, expired = {}, nil, nil
for _, w in ipairs(waits) do
  local target, got = awaited_run(w), nil
  if target then
    if w['step'] ~= '' then got = redis.call('HGET', step_key(target, w['step']), 'state')
    else got = redis.call('HGET', run_key(target), 'state') end
  end
  if got ~= w['state'] then
    local what = 'dag ' .. w['dag'] .. (w['step'] ~= '' and (' step ' .. w['step']) or '') ..
      (w['logical_date'] == 'latest' and ' (latest run)' or (' (logical date ' .. fire .. ')')) ..
      ' to be ' .. w['state'] .. '; now ' .. (target and (target .. ' is ' .. (got or 'unknown')) or 'no such run')
    table.insert(pending, what)
    local every = tonumber(w['interval'])
    if not interval or every < interval then interval = every end
    if t - since >= tonumber(w['timeout']) and not expired then
      expired = what .. ' (timeout ' .. w['timeout'] .. 's)'
    end
  end
end
if #pending == 0 then
  redis.call('HDEL', sk, 'waiting_for', 'next_check')
  return {'go'}
end
if expired then
  redis.call('HSET', ak, 'number', n, 'state', 'failed', 'ended_at', now, 'reason', 'wait_timeout',
    'error', 'gave up waiting for ' .. expired)
  redis.call('HSET', sk, 'error', 'gave up waiting for ' .. expired)
  redis.call('HDEL', sk, 'waiting_for', 'next_check')
  local ready = {}
  settle(rid, s, 'failed', now)
  propagate(rid, s, 'failed', now, ready)
  maybe_end_run(rid, now, ready)
  return {'done', 'failed', ready}
end
local due = t + interval
local checks = redis.call('HINCRBY', ak, 'wait_checks', 1)
redis.call('HSET', ak, 'number', n, 'state', 'waiting')
redis.call('HSET', sk, 'state', 'waiting', 'waiting_for', cjson.encode(pending), 'next_check', due)
redis.call('ZADD', K.queued(), due, member(rid, s, n))
if state ~= 'waiting' then event(rid, 'step', s, 'waiting', n, now) end
return {'waiting', {{rid, s, n, redis.call('HGET', sk, 'queue'), redis.call('HGET', sk, 'timeout') or ''}},
        tostring(interval), checks}
