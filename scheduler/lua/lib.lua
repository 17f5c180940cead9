-- Shared helpers, prepended to every script below (Redis runs each script atomically).
-- Every script takes ARGV[1] = key prefix. Not Redis Cluster safe by design: one run's keys are
-- computed inside the script.
local P = ARGV[1]

-- Every key, built exactly like scheduler/keys.py (one helper per Keys method, same name; a test
-- evaluates both and compares them). No script builds a key any other way.
local K = {}
function K.store_id() return P .. ':store_id' end
function K.dags() return P .. ':dags' end
function K.dag(d) return P .. ':dag:' .. d end
function K.dag_version(d, v) return P .. ':dag:' .. d .. ':v:' .. v end
function K.dag_shas(d) return P .. ':dag:' .. d .. ':shas' end
function K.dag_runs(d) return P .. ':dag:' .. d .. ':runs' end
function K.dag_active(d) return P .. ':dag:' .. d .. ':active' end
function K.dag_waiting(d) return P .. ':dag:' .. d .. ':waiting' end
function K.dag_fires(d) return P .. ':dag:' .. d .. ':fires' end
function K.dag_staged(d) return P .. ':dag:' .. d .. ':staged' end
function K.dag_intervals(d) return P .. ':dag:' .. d .. ':intervals' end
function K.sync_files() return P .. ':sync:files' end
function K.import_errors() return P .. ':sync:errors' end
function K.agenda() return P .. ':agenda' end
function K.staged() return P .. ':staged' end
function K.staged_list(queue, due) return P .. ':staged:' .. queue .. '|' .. due end
function K.sched_epoch() return P .. ':sched_epoch' end
function K.wake() return P .. ':wake' end
function K.calendars() return P .. ':calendars' end
function K.outages() return P .. ':outages' end
function K.leader() return P .. ':scheduler:leader' end
function K.leader_token() return P .. ':scheduler:token' end
function K.runs() return P .. ':runs' end
function K.run(rid) return P .. ':run:' .. rid end
function K.step(rid, s) return P .. ':run:' .. rid .. ':step:' .. s end
function K.attempt(rid, s, n) return P .. ':run:' .. rid .. ':step:' .. s .. ':a:' .. n end
function K.log(rid, s, n) return P .. ':log:' .. rid .. ':' .. s .. ':' .. n end
function K.pools() return P .. ':pools' end
function K.pool_used() return P .. ':pool_used' end
function K.pool_waiting(pool) return P .. ':pool:' .. pool .. ':waiting' end
function K.running() return P .. ':running' end
function K.queued() return P .. ':queued' end
function K.delayed() return P .. ':delayed' end
function K.sla() return P .. ':sla' end
function K.jobs_refused() return P .. ':jobs_refused' end
function K.events() return P .. ':events' end
local run_key, step_key, attempt_key = K.run, K.step, K.attempt

-- The state vocabulary, mirrored from scheduler/model.py (a test compares them).
local STEP_STATES = {'pending', 'queued', 'running', 'retrying', 'success', 'failed', 'upstream_failed',
  'skipped', 'cancelled'}
local RUN_STATES = {'queued', 'running', 'success', 'failed', 'cancelled'}
local STEP_DONE = {success = true, failed = true, upstream_failed = true, skipped = true, cancelled = true}
local STEP_WAITING = {pending = true, queued = true, retrying = true}  -- not started: cancel settles these
local RUN_DONE = {success = true, failed = true, cancelled = true}
local FAILED = {failed = true, upstream_failed = true}  -- failures for trigger rules

-- Is this step told to stop? Its own cancel flag, or its run's (except 'always' steps: cleanup).
local function cancel_requested(rid, s)
  local sk = step_key(rid, s)
  if redis.call('HGET', sk, 'cancel') == '1' then return true end
  return redis.call('HGET', run_key(rid), 'cancel') == '1' and redis.call('HGET', sk, 'rule') ~= 'always'
end

-- Redis's own clock (seconds): leases and the queued index use it, so workers' clocks need not agree.
local function server_time()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Members of the running (lease) and queued indexes: one per attempt.
local function member(rid, s, n) return rid .. '|' .. s .. '|' .. n end

-- Who holds an attempt's lease: its adopter once adopted (see adopt.lua), else the worker that
-- started it. '' after a hand-over, until another worker adopts it.
local function holder_of(ak)
  local h = redis.call('HGET', ak, 'holder')
  if h then return h end
  return redis.call('HGET', ak, 'worker') or ''
end

-- May ``who`` act for the attempt (renew, log, finish)? An empty ``who`` asks for no fence (old callers).
local function held_by(ak, who)
  return who == nil or who == '' or holder_of(ak) == who
end

local function event(rid, kind, step, state, attempt, now)
  redis.call('XADD', K.events(), 'MAXLEN', '~', 10000, '*',
    'run', rid, 'kind', kind, 'step', step or '', 'state', state or '', 'attempt', attempt or '', 'at', now)
end

-- Queue a step's next attempt (1 at first; after a rerun, the numbering goes on); returns the entry
-- the caller enqueues on RQ.
local function queue_step(rid, s, now)
  local sk = step_key(rid, s)
  local n = tostring(redis.call('HINCRBY', sk, 'attempt', 1))
  redis.call('HSET', sk, 'state', 'queued', 'queued_at', now)
  redis.call('ZADD', K.queued(), server_time(), member(rid, s, n))
  event(rid, 'step', s, 'queued', n, now)
  return {rid, s, n, redis.call('HGET', sk, 'queue'), redis.call('HGET', sk, 'timeout') or ''}
end

-- Take one of the DAG's active slots and queue the run's root steps.
local function activate(rid, now, ready)
  local rk = run_key(rid)
  redis.call('SADD', K.dag_active(redis.call('HGET', rk, 'dag')), rid)
  for _, s in ipairs(cjson.decode(redis.call('HGET', rk, 'roots'))) do
    table.insert(ready, queue_step(rid, s, now))
  end
end

-- Write a new run and its steps, indexed by ``created``; with an idempotency key (a scheduled run's
-- logical date) only once per DAG and key. Returns the existing run's id when the key is taken.
local function insert_run(rid, now, dag, created, key, interval, fields_json, steps_json)
  if key ~= '' then
    local existing = redis.call('HGET', K.dag_fires(dag), key)
    if existing then return existing end
    redis.call('HSET', K.dag_fires(dag), key, rid)
  end
  redis.call('HSET', run_key(rid), 'fire_key', key)
  local function hset_all(k, fields)
    local flat = {}
    for f, v in pairs(fields) do table.insert(flat, f); table.insert(flat, v) end
    redis.call('HSET', k, unpack(flat))
  end
  local fields = cjson.decode(fields_json)
  hset_all(run_key(rid), fields)
  for _, step in ipairs(cjson.decode(steps_json)) do hset_all(step_key(rid, step[1]), step[2]) end
  redis.call('ZADD', K.runs(), created, rid)
  redis.call('ZADD', K.dag_runs(dag), created, rid)
  if interval ~= '' then redis.call('HSET', K.dag_intervals(dag), interval, rid) end
  for _, entry in ipairs(cjson.decode(fields['slas'] or '[]')) do
    redis.call('ZADD', K.sla(), entry[2], entry[1])
  end
  event(rid, 'run', '', 'queued', '', now)
  return nil
end

-- Start a run now, or make it wait for one of its DAG's max_active_runs slots.
local function start_or_wait(rid, now, ready)
  local rk = run_key(rid)
  local dag = redis.call('HGET', rk, 'dag')
  local limit = tonumber(redis.call('HGET', rk, 'max_active') or '0')
  if limit > 0 and redis.call('SCARD', K.dag_active(dag)) >= limit then
    redis.call('RPUSH', K.dag_waiting(dag), rid)
    event(rid, 'run', '', 'waiting', '', now)
    return
  end
  activate(rid, now, ready)
end

-- Pools ------------------------------------------------------------------------------------------
-- {P}:pools (hash name -> slots), {P}:pool_used (hash name -> slots taken), {P}:pool:NAME:waiting
-- (zset of attempts waiting for slots, by queue rank then time). A step takes its slots when it
-- starts (start.lua) or when they are handed to it here, and gives them back when its attempt ends.
local RANK = {high = 0, default = 1, low = 2}

local function pool_rank(sk)
  return (RANK[redis.call('HGET', sk, 'queue') or 'default'] or 1) * 1e10 + server_time()
end

-- Hand a pool's free slots to waiting attempts, best queue first; returns their ready entries.
local function fill_pool(pool, now, ready)
  local slots = tonumber(redis.call('HGET', K.pools(), pool) or '-1')
  if slots < 0 then slots = 1e18 end
  local used = tonumber(redis.call('HGET', K.pool_used(), pool) or '0')
  local wkey = K.pool_waiting(pool)
  for _, m in ipairs(redis.call('ZRANGE', wkey, 0, -1)) do
    local wr, ws, wn = string.match(m, '^(.*)|(.*)|(%d+)$')
    local wk = step_key(wr, ws)
    if redis.call('HGET', wk, 'state') ~= 'queued' or redis.call('HGET', wk, 'attempt') ~= wn then
      redis.call('ZREM', wkey, m)
    else
      local need = tonumber(redis.call('HGET', wk, 'pool_slots') or '1')
      if used + need <= slots then
        used = used + need
        redis.call('HINCRBY', K.pool_used(), pool, need)
        redis.call('HSET', wk, 'pool_held', '1')
        redis.call('ZREM', wkey, m)
        redis.call('ZADD', K.queued(), server_time(), m)
        table.insert(ready, {wr, ws, wn, redis.call('HGET', wk, 'queue'), redis.call('HGET', wk, 'timeout') or ''})
      end
    end
  end
end

-- Give back the slots a step holds (its attempt ended, or it was cancelled before it started).
local function release_pool(rid, s, now, ready)
  local sk = step_key(rid, s)
  local pool = redis.call('HGET', sk, 'pool')
  if not pool or pool == '' or redis.call('HGET', sk, 'pool_held') ~= '1' then return end
  redis.call('HSET', sk, 'pool_held', '0')
  redis.call('HINCRBY', K.pool_used(), pool, -tonumber(redis.call('HGET', sk, 'pool_slots') or '1'))
  fill_pool(pool, now, ready)
end

-- Mark a step terminal and count it against the run.
local function settle(rid, s, state, now)
  local sk = step_key(rid, s)
  local n = redis.call('HGET', sk, 'attempt')
  redis.call('ZREM', K.queued(), member(rid, s, n))
  local pool = redis.call('HGET', sk, 'pool')
  if pool and pool ~= '' then redis.call('ZREM', K.pool_waiting(pool), member(rid, s, n)) end
  redis.call('HSET', sk, 'state', state)
  if not redis.call('HGET', sk, 'ended_at') then redis.call('HSET', sk, 'ended_at', now) end
  local rk = run_key(rid)
  redis.call('HINCRBY', rk, 'unfinished', -1)
  if state == 'failed' or state == 'upstream_failed' then redis.call('HINCRBY', rk, 'failed', 1) end
  event(rid, 'step', s, state, redis.call('HGET', sk, 'attempt'), now)
end

-- What a pending step's trigger rule says, given how its upstream steps ended so far:
-- 'run', a terminal state to settle it in ('skipped', 'upstream_failed', 'cancelled'), or nil (wait).
local function decide(rid, dk)
  local h = redis.call('HMGET', dk, 'up_done', 'up_success', 'up_failed', 'rule', 'upstream')
  local done, succ, fail = tonumber(h[1] or '0'), tonumber(h[2] or '0'), tonumber(h[3] or '0')
  local rule, total = h[4] or 'all_success', #cjson.decode(h[5])
  if cancel_requested(rid, redis.call('HGET', dk, 'name')) then return 'cancelled' end
  local all = done >= total
  if rule == 'all_success' then
    if fail > 0 then return 'upstream_failed' end
    if all then return (succ == total) and 'run' or 'skipped' end
  elseif rule == 'all_failed' then
    if done - fail > 0 then return 'skipped' end
    if all then return 'run' end
  elseif rule == 'all_done' or rule == 'always' then
    if all then return 'run' end
  elseif rule == 'one_success' then
    if succ > 0 then return 'run' end
    if all then return (fail > 0) and 'upstream_failed' or 'skipped' end
  elseif rule == 'one_failed' then
    if fail > 0 then return 'run' end
    if all then return 'skipped' end
  elseif rule == 'none_failed' then
    if fail > 0 then return 'upstream_failed' end
    if all then return 'run' end
  end
  return nil
end

-- A step reached a terminal state: count it at each direct downstream step and follow what their
-- trigger rules decide (queue them, or settle them, which in turn tells their own downstream).
local function propagate(rid, s, state, now, ready)
  local todo = {{s, state}}
  while #todo > 0 do
    local item = table.remove(todo, 1)
    for _, d in ipairs(cjson.decode(redis.call('HGET', step_key(rid, item[1]), 'downstream'))) do
      local dk = step_key(rid, d)
      if redis.call('HGET', dk, 'state') == 'pending' then
        redis.call('HINCRBY', dk, 'up_done', 1)
        if item[2] == 'success' then redis.call('HINCRBY', dk, 'up_success', 1)
        elseif FAILED[item[2]] then redis.call('HINCRBY', dk, 'up_failed', 1) end
        local decision = decide(rid, dk)
        if decision == 'run' then
          table.insert(ready, queue_step(rid, d, now))
        elseif decision then
          settle(rid, d, decision, now)
          table.insert(todo, {d, decision})
        end
      end
    end
  end
end

-- End the run once no step is left; hand its active slot to the next waiting run.
local function maybe_end_run(rid, now, ready)
  local rk = run_key(rid)
  if tonumber(redis.call('HGET', rk, 'unfinished')) > 0 then return end
  local state = redis.call('HGET', rk, 'final')
  if redis.call('HGET', rk, 'handled') ~= '1' then
    state = 'success'
    if redis.call('HGET', rk, 'cancel') == '1' then state = 'cancelled'
    elseif tonumber(redis.call('HGET', rk, 'failed') or '0') > 0 then state = 'failed' end
    -- The DAG's handler steps (on_failure, on_success, on_exit) run once, when the run ends that way;
    -- the run keeps the state its steps gave it, whatever the handlers do.
    redis.call('HSET', rk, 'handled', '1', 'final', state)
    local fired = 0
    for name, when in pairs(cjson.decode(redis.call('HGET', rk, 'handlers') or '{}')) do
      if when == 'exit' or when == state then
        fired = fired + 1
        table.insert(ready, queue_step(rid, name, now))
      elseif redis.call('HGET', step_key(rid, name), 'state') == 'pending' then
        redis.call('HSET', step_key(rid, name), 'state', 'skipped')
      end
    end
    if fired > 0 then
      redis.call('HINCRBY', rk, 'unfinished', fired)
      return
    end
  end
  redis.call('HSET', rk, 'state', state, 'ended_at', now)
  event(rid, 'run', '', state, '', now)
  local dag = redis.call('HGET', rk, 'dag')
  if redis.call('SREM', K.dag_active(dag), rid) == 1 then
    while true do
      local nxt = redis.call('LPOP', K.dag_waiting(dag))
      if not nxt then break end
      if redis.call('HGET', run_key(nxt), 'state') == 'queued' then
        activate(nxt, now, ready)
        break
      end
    end
  end
end

-- End the running attempt n of a step (already fenced by the caller) with an outcome:
-- success | failed | cancelled | lost (counts as a failed try) | requeue (handed back: does not count).
-- Returns {'retry', {ready entry of the next attempt}, delay} or {'done', state, ready entries}.
local function end_attempt(rid, s, n, outcome, now, delay)
  local rk, sk = run_key(rid), step_key(rid, s)
  redis.call('ZREM', K.running(), member(rid, s, n))
  local freed = {}
  release_pool(rid, s, now, freed)
  redis.call('HSET', attempt_key(rid, s, n), 'state', outcome, 'ended_at', now)
  local cancelled = cancel_requested(rid, s)
  if outcome == 'requeue' and not cancelled then
    redis.call('HINCRBY', sk, 'max_attempts', 1)
    delay = 0
  end
  local new = outcome
  if outcome == 'lost' then new = 'failed' end
  if cancelled or outcome == 'cancelled' then new = 'cancelled'
  elseif (new == 'failed' or new == 'requeue') and tonumber(n) < tonumber(redis.call('HGET', sk, 'max_attempts')) then
    local nxt = tonumber(n) + 1
    redis.call('HSET', sk, 'state', 'retrying', 'attempt', nxt, 'retry_in', delay)
    redis.call('ZADD', K.queued(), server_time() + tonumber(delay), member(rid, s, nxt))
    event(rid, 'step', s, 'retrying', tostring(nxt), now)
    return {'retry', {{rid, s, tostring(nxt), redis.call('HGET', sk, 'queue'), redis.call('HGET', sk, 'timeout') or ''}},
            tostring(delay), freed}
  end
  if new == 'requeue' then new = 'failed' end
  local ready = freed
  settle(rid, s, new, now)
  propagate(rid, s, new, now, ready)
  maybe_end_run(rid, now, ready)
  return {'done', new, ready}
end

-- The names of every step of a run, handler steps included (the one list retention and unstaging use).
local function run_step_names(rid)
  local rk = run_key(rid)
  local names = cjson.decode(redis.call('HGET', rk, 'steps') or '[]')
  for h, _ in pairs(cjson.decode(redis.call('HGET', rk, 'handlers') or '{}')) do table.insert(names, h) end
  return names
end

-- Delete a run and every key of it: the run hash, each step's hash, attempts and logs (handlers
-- included), its entries in the run, queued, running, SLA and active indexes, and the DAG's fires
-- and intervals entries that still name it. The one way a run is deleted (retention, unstaging).
local function delete_run(rid, fallback_fire)
  local rk = run_key(rid)
  local f = {}
  local run = redis.call('HGETALL', rk)
  for i = 1, #run, 2 do f[run[i]] = run[i + 1] end
  local doomed = {rk}
  for _, s in ipairs(run_step_names(rid)) do
    local n = tonumber(redis.call('HGET', step_key(rid, s), 'attempt') or '0')
    local pool = redis.call('HGET', step_key(rid, s), 'pool')
    if n > 0 then
      redis.call('ZREM', K.queued(), member(rid, s, n))
      redis.call('ZREM', K.running(), member(rid, s, n))
      if pool and pool ~= '' then redis.call('ZREM', K.pool_waiting(pool), member(rid, s, n)) end
    end
    table.insert(doomed, step_key(rid, s))
    for a = 1, n do
      table.insert(doomed, attempt_key(rid, s, a))
      table.insert(doomed, K.log(rid, s, a))
    end
  end
  for _, entry in ipairs(cjson.decode(f['slas'] or '[]')) do redis.call('ZREM', K.sla(), entry[1]) end
  local dag = f['dag']
  if dag then
    local fire = f['fire_key'] or ''
    if fire == '' then fire = fallback_fire or '' end  -- runs written before fire_key was recorded
    if fire ~= '' and redis.call('HGET', K.dag_fires(dag), fire) == rid then redis.call('HDEL', K.dag_fires(dag), fire) end
    local interval = f['data_interval_start'] or ''
    if interval ~= '' and redis.call('HGET', K.dag_intervals(dag), interval) == rid then
      redis.call('HDEL', K.dag_intervals(dag), interval)
    end
    redis.call('SREM', K.dag_active(dag), rid)
    redis.call('LREM', K.dag_waiting(dag), 0, rid)
    redis.call('ZREM', K.dag_runs(dag), rid)
    redis.call('ZREM', K.dag_staged(dag), rid)
  end
  redis.call('ZREM', K.runs(), rid)
  for i = 1, #doomed, 500 do redis.call('UNLINK', unpack(doomed, i, math.min(#doomed, i + 499))) end
  return f
end
