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
function K.plan(digest) return P .. ':plan:' .. digest end
function K.plan_refs() return P .. ':plan_refs' end
function K.checkpoint(rid, s) return P .. ':run:' .. rid .. ':step:' .. s .. ':checkpoint' end
function K.log(rid, s, n) return P .. ':log:' .. rid .. ':' .. s .. ':' .. n end
function K.pools() return P .. ':pools' end
function K.pool_used() return P .. ':pool_used' end
function K.pool_waiting(pool) return P .. ':pool:' .. pool .. ':waiting' end
function K.running() return P .. ':running' end
function K.queued() return P .. ':queued' end
function K.delayed() return P .. ':delayed' end
function K.sla() return P .. ':sla' end
function K.jobs_refused() return P .. ':jobs_refused' end
function K.datasets() return P .. ':datasets' end
function K.dataset_events(name) return P .. ':dataset:' .. name .. ':events' end
function K.dataset_seen(d) return P .. ':dag:' .. d .. ':datasets_seen' end
function K.events() return P .. ':events' end
local run_key, step_key, attempt_key = K.run, K.step, K.attempt

-- The state vocabulary, mirrored from scheduler/model.py (a test compares them).
local STEP_STATES = {'pending', 'queued', 'running', 'retrying', 'success', 'failed', 'upstream_failed',
  'skipped', 'cancelled', 'waiting'}
local RUN_STATES = {'queued', 'running', 'success', 'failed', 'cancelled'}
local STEP_DONE = {success = true, failed = true, upstream_failed = true, skipped = true, cancelled = true}
-- Not running now: cancel settles these ('waiting': a sensor between pokes).
local STEP_WAITING = {pending = true, queued = true, retrying = true, waiting = true}
local RUN_DONE = {success = true, failed = true, cancelled = true}
local FAILED = {failed = true, upstream_failed = true}  -- failures for trigger rules

-- Some fields of a hash in one command, as a table by field name (absent fields are nil).
local function fields(key, names)
  local values, found = redis.call('HMGET', key, unpack(names)), {}
  for i, name in ipairs(names) do found[name] = values[i] end
  return found
end

-- Is this step told to stop? Its own cancel flag, its mapped step's (for an instance STEP[i]), or its
-- run's (except 'always' steps: cleanup).
-- ``h``: the step's fields (cancel, rule, parent) when the caller read them already.
local run_cancelled = {}  -- per run, read once per script (only cancel.lua sets it, before it reads)
local function cancel_requested(rid, s, h)
  h = h or fields(step_key(rid, s), {'cancel', 'rule', 'parent'})
  if h.cancel == '1' then return true end
  if h.parent and redis.call('HGET', step_key(rid, h.parent), 'cancel') == '1' then return true end
  if h.rule == 'always' then return false end
  if run_cancelled[rid] == nil then run_cancelled[rid] = redis.call('HGET', run_key(rid), 'cancel') == '1' end
  return run_cancelled[rid]
end

-- A mapped step's instances are steps named STEP[0], STEP[1], ... (step names cannot hold '[').
local function instance_name(s, i) return s .. '[' .. i .. ']' end

-- Redis's own clock (seconds): leases and the queued index use it, so workers' clocks need not agree.
-- Read once per script: a script is one instant.
local clock
local function server_time()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return clock
end

-- Members of the running (lease) and queued indexes: one per attempt.
local function member(rid, s, n) return rid .. '|' .. s .. '|' .. n end

-- An attempt's RQ job id, exactly as scheduler/dispatch.py's job_id makes it ([A-Za-z0-9_-] only).
local function job_id(rid, s, n)
  local parent, index = string.match(s, '^(.*)%[(%d+)%]$')
  if parent then return rid .. '-' .. parent .. '-' .. n .. '-i' .. index end
  return rid .. '-' .. s .. '-' .. n
end

-- Who holds an attempt's lease: its adopter once adopted (see adopt.lua), else the worker that
-- started it. '' after a hand-over, until another worker adopts it.
local function holder_of(ak)
  local h = redis.call('HMGET', ak, 'holder', 'worker')
  return h[1] or h[2] or ''
end

-- May ``who`` act for the attempt (renew, log, finish)? An empty ``who`` asks for no fence (old callers).
local function held_by(ak, who)
  return who == nil or who == '' or holder_of(ak) == who
end

local function event(rid, kind, step, state, attempt, now)
  redis.call('XADD', K.events(), 'MAXLEN', '~', 10000, '*',
    'run', rid, 'kind', kind, 'step', step or '', 'state', state or '', 'attempt', attempt or '', 'at', now)
end

-- Record an event of a dataset (a producer step succeeded, or ctl dataset emit): numbered per dataset,
-- kept as its last event and in its capped list of recent ones. Returns the event's JSON.
local function record_dataset(name, event_fields)
  local last = redis.call('HGET', K.datasets(), name)
  event_fields['seq'] = (last and cjson.decode(last)['seq'] or 0) + 1
  event_fields['dataset'] = name
  local text = cjson.encode(event_fields)
  redis.call('HSET', K.datasets(), name, text)
  redis.call('LPUSH', K.dataset_events(name), text)
  redis.call('LTRIM', K.dataset_events(name), 0, 99)
  redis.call('RPUSH', K.wake(), 'dataset')  -- the scheduler looks at its consumers at once
  redis.call('LTRIM', K.wake(), -100, -1)
  return text
end

-- Queue a step's next attempt (1 at first; after a rerun, the numbering goes on); returns the entry
-- the caller enqueues on RQ.
local function queue_step(rid, s, now)
  local sk = step_key(rid, s)
  local n = tostring(redis.call('HINCRBY', sk, 'attempt', 1))
  redis.call('HSET', sk, 'state', 'queued')
  redis.call('ZADD', K.queued(), server_time(), member(rid, s, n))
  event(rid, 'step', s, 'queued', n, now)
  local h = redis.call('HMGET', sk, 'queue', 'timeout')
  return {rid, s, n, h[1], h[2] or ''}
end

-- A step may run: queue its first attempt, or, for a mapped step (for_each), expand it into its
-- instances (see expand below, defined once settle and propagate exist).
local expand
local function start_step(rid, s, now, ready)
  if redis.call('HEXISTS', step_key(rid, s), 'for_each') == 1 then return expand(rid, s, now, ready) end
  table.insert(ready, queue_step(rid, s, now))
end

-- Take one of the DAG's active slots and queue the run's root steps ('roots' is left out when they are
-- all its steps).
local function activate(rid, now, ready)
  local h = fields(run_key(rid), {'dag', 'roots', 'steps'})
  redis.call('SADD', K.dag_active(h.dag), rid)
  for _, s in ipairs(cjson.decode(h.roots or h.steps)) do
    start_step(rid, s, now, ready)
  end
end

-- A run's logical date in UTC (ISO), how other DAGs' wait_for find it: 'fire_date', left out when it is
-- the logical date as written.
local function fire_date(rid)
  local h = redis.call('HMGET', run_key(rid), 'fire_date', 'logical_date')
  return h[1] or h[2] or ''
end

-- Stored plans (see scheduler/records.py): one string per distinct plan, counted by the step records
-- that name it. Take a reference, writing the text (each time: a copy a Redis writer changed is put
-- right for the runs to come; ``text`` nil means create_steps.lua wrote it ahead, expiring, and it is
-- kept now), or give one back (the plan goes at zero).
local function hold_plan(digest, text)
  redis.call('HINCRBY', K.plan_refs(), digest, 1)
  if text then redis.call('SET', K.plan(digest), text) else redis.call('PERSIST', K.plan(digest)) end
end

-- The text of a step's plan: stored by digest, or (a record written before plans were stored by
-- content) the plan itself.
local function plan_text(digest)
  if not digest then return '' end
  if string.sub(digest, 1, 1) == '{' then return digest end
  return redis.call('GET', K.plan(digest)) or ''
end

local function drop_plan(digest)
  if not digest or digest == '' or string.sub(digest, 1, 1) == '{' then return end
  if redis.call('HINCRBY', K.plan_refs(), digest, -1) <= 0 then
    redis.call('HDEL', K.plan_refs(), digest)
    redis.call('UNLINK', K.plan(digest))
  end
end

-- Set a hash's fields from a table of strings; an empty string removes the field (lean records keep no
-- field at its default, see scheduler/records.py).
local function hset_all(k, fields)
  local flat, gone = {}, {}
  for f, v in pairs(fields) do
    if v == '' then table.insert(gone, f) else table.insert(flat, f); table.insert(flat, v) end
  end
  if #flat > 0 then redis.call('HSET', k, unpack(flat)) end
  if #gone > 0 then redis.call('HDEL', k, unpack(gone)) end
end

-- The pool a step takes slots of: its own, else its queue's ('queue:low'), which limits nothing until
-- `ctl pool set queue:low N` defines it.
local function pool_of(sk)
  local h = redis.call('HMGET', sk, 'pool', 'queue')
  return h[1] or ('queue:' .. (h[2] or 'default'))
end

-- Write a new run and its steps, indexed by ``created``; with an idempotency key (a scheduled run's
-- logical date) only once per DAG and key. Returns the existing run's id when the key is taken.
local function insert_run(rid, now, dag, created, key, interval, fields_json, steps_json)
  if key ~= '' then
    local existing = redis.call('HGET', K.dag_fires(dag), key)
    if existing then return existing end
    redis.call('HSET', K.dag_fires(dag), key, rid)
  end
  if key ~= '' then redis.call('HSET', run_key(rid), 'fire_key', key) end
  local fields = cjson.decode(fields_json)
  hset_all(run_key(rid), fields)
  local given = cjson.decode(steps_json)
  for _, step in ipairs(given['steps']) do
    hset_all(step_key(rid, step[1]), step[2])
    if step[2]['plan'] then hold_plan(step[2]['plan'], given['plans'][step[2]['plan']]) end
  end
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
  local wkey = K.pool_waiting(pool)
  local waiting = redis.call('ZRANGE', wkey, 0, -1)
  if #waiting == 0 then return end
  local slots = tonumber(redis.call('HGET', K.pools(), pool) or '-1')
  if slots < 0 then slots = 1e18 end
  local used = tonumber(redis.call('HGET', K.pool_used(), pool) or '0')
  for _, m in ipairs(waiting) do
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
local function release_pool(rid, s, now, ready, held)
  local sk = step_key(rid, s)
  if (held or redis.call('HGET', sk, 'pool_held')) ~= '1' then return end
  local pool = pool_of(sk)
  redis.call('HDEL', sk, 'pool_held')
  redis.call('HINCRBY', K.pool_used(), pool, -tonumber(redis.call('HGET', sk, 'pool_slots') or '1'))
  fill_pool(pool, now, ready)
end

-- Mark a step terminal and count it against the run. ``n``: the attempt that just ended (it was running,
-- so it waits in no queue); nil for a step settled without running now (it may be queued).
local function settle(rid, s, state, now, n)
  local sk = step_key(rid, s)
  if not n then
    n = redis.call('HGET', sk, 'attempt')
    redis.call('ZREM', K.queued(), member(rid, s, n))
    redis.call('ZREM', K.pool_waiting(pool_of(sk)), member(rid, s, n))
  end
  redis.call('HSET', sk, 'state', state)
  redis.call('HSETNX', sk, 'ended_at', now)
  local rk = run_key(rid)
  redis.call('HINCRBY', rk, 'unfinished', -1)
  if state == 'failed' or state == 'upstream_failed' then redis.call('HINCRBY', rk, 'failed', 1) end
  event(rid, 'step', s, state, n, now)
end

-- What a pending step's trigger rule says, given how its upstream steps ended so far:
-- 'run', a terminal state to settle it in ('skipped', 'upstream_failed', 'cancelled'), or nil (wait).
local DECIDE_FIELDS = {'up_done', 'up_success', 'up_failed', 'rule', 'upstream', 'up_extra', 'cancel', 'parent',
  'state'}
local function decide(rid, s, h)
  h = h or fields(step_key(rid, s), DECIDE_FIELDS)
  local done, succ, fail = tonumber(h.up_done or '0'), tonumber(h.up_success or '0'), tonumber(h.up_failed or '0')
  -- A mapped upstream step counts once per instance (up_extra: the instances beyond one each).
  local rule, total = h.rule or 'all_success', #cjson.decode(h.upstream or '[]') + tonumber(h.up_extra or '0')
  if cancel_requested(rid, s, h) then return 'cancelled' end
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

local instance_ended  -- fan-out bookkeeping, defined below

-- A step reached a terminal state: count it at each direct downstream step and follow what their
-- trigger rules decide (queue them, or settle them, which in turn tells their own downstream). An
-- instance STEP[i] of a mapped step counts at its mapped step's downstream steps, once per instance.
local function propagate(rid, s, state, now, ready)
  local todo = {{s, state}}
  while #todo > 0 do
    local item = table.remove(todo, 1)
    local from = item[1]
    local parent, downstream = unpack(redis.call('HMGET', step_key(rid, from), 'parent', 'downstream'))
    if parent then
      instance_ended(rid, parent, item[2], now, ready)
      from = parent
      downstream = redis.call('HGET', step_key(rid, from), 'downstream')
    end
    for _, d in ipairs(cjson.decode(downstream or '[]')) do
      local dk = step_key(rid, d)
      local h = fields(dk, DECIDE_FIELDS)
      if h.state == 'pending' then  -- count the result, then decide on the counts as they are now
        h.up_done = redis.call('HINCRBY', dk, 'up_done', 1)
        if item[2] == 'success' then h.up_success = redis.call('HINCRBY', dk, 'up_success', 1)
        elseif FAILED[item[2]] then h.up_failed = redis.call('HINCRBY', dk, 'up_failed', 1) end
        local decision = decide(rid, d, h)
        if decision == 'run' then
          start_step(rid, d, now, ready)
        elseif decision then
          settle(rid, d, decision, now)
          table.insert(todo, {d, decision})
        end
      end
    end
  end
end

-- Cancel the waiting instances of a mapped step (they settle, counted as usual); returns how many of
-- its instances are running (their workers stop them).
local function cancel_instances(rid, s, now, ready)
  local running = 0
  for i = 0, tonumber(redis.call('HGET', step_key(rid, s), 'instances') or '0') - 1 do
    local name = instance_name(s, i)
    local st = redis.call('HGET', step_key(rid, name), 'state')
    if STEP_WAITING[st] and cancel_requested(rid, name) then
      release_pool(rid, name, now, ready)
      settle(rid, name, 'cancelled', now)
      propagate(rid, name, 'cancelled', now, ready)
    elseif st == 'running' then running = running + 1 end
  end
  return running
end

-- Fan-out -----------------------------------------------------------------------------------------
-- A mapped step (its hash has 'for_each': {"items": JSON}, {"step": S, "output": N} or {"param": P})
-- expands, in the transition that makes it ready, into instances STEP[0..n-1]: step hashes of their own
-- (attempts, retries, logs, pool) with 'parent' and 'index', at most max_parallel of them queued at a
-- time. The mapped step keeps the list's JSON ('items': the worker reads its element there) and counts
-- its instances (map_done, map_success, map_failed); it ends when they all have, with their outputs
-- gathered as JSON arrays in index order. An empty list skips it; anything but a list fails it.

-- A JSON string literal (cjson would escape '/' as well).
local function json_string(text)
  return '"' .. string.gsub(text, '[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == '\\' then return '\\\\' end
    return string.format('\\u%04x', string.byte(c))
  end) .. '"'
end

-- Keep each downstream step's count of upstream results right: a mapped step counts 'extra' times more.
local function set_extra(rid, s, extra)
  local sk = step_key(rid, s)
  local delta = extra - tonumber(redis.call('HGET', sk, 'map_extra') or '0')
  if delta == 0 then return end
  redis.call('HSET', sk, 'map_extra', extra)
  for _, d in ipairs(cjson.decode(redis.call('HGET', sk, 'downstream') or '[]')) do
    redis.call('HINCRBY', step_key(rid, d), 'up_extra', delta)
  end
end

-- The list a mapped step runs over, as its JSON text, or nil and why not.
local function for_each_list(rid, s)
  local source = cjson.decode(redis.call('HGET', step_key(rid, s), 'for_each'))
  local text
  if source['items'] then
    text = source['items']
  elseif source['step'] then
    local outputs = redis.call('HGET', step_key(rid, source['step']), 'outputs')
    text = outputs and cjson.decode(outputs)[source['output']]
    if type(text) ~= 'string' then
      return nil, "step '" .. source['step'] .. "' has no output '" .. source['output'] .. "' to run over"
    end
  else
    local value = cjson.decode(redis.call('HGET', run_key(rid), 'params'))[source['param']]
    if type(value) ~= 'string' then return nil, "param '" .. source['param'] .. "' is not a JSON list" end
    text = value
  end
  if not string.match(text, '^%s*%[') then return nil, 'for_each: not a JSON list: ' .. string.sub(text, 1, 80) end
  local ok, items = pcall(cjson.decode, text)
  if not ok or type(items) ~= 'table' then return nil, 'for_each: not a JSON list: ' .. string.sub(text, 1, 80) end
  return text, nil, #items
end

-- Settle a mapped step that did not expand ('skipped' for an empty list, 'failed' with why) and tell
-- its downstream steps, as for any step.
local function settle_unexpanded(rid, s, state, why, now, ready)
  local sk = step_key(rid, s)
  set_extra(rid, s, 0)
  redis.call('HSET', sk, 'instances', 0, 'error', why or '')
  if not redis.call('HGET', sk, 'attempt') then redis.call('HSET', sk, 'attempt', 0) end
  settle(rid, s, state, now)
  propagate(rid, s, state, now, ready)
end

expand = function(rid, s, now, ready)
  local sk = step_key(rid, s)
  local text, why, count = for_each_list(rid, s)
  local limit = tonumber(redis.call('HGET', sk, 'max_items') or '1000')
  if text and count > limit then
    text, why = nil, 'for_each: ' .. count .. ' items; the limit is ' .. limit .. ' (max_items)'
  end
  if not text then return settle_unexpanded(rid, s, 'failed', why, now, ready) end
  if count == 0 then return settle_unexpanded(rid, s, 'skipped', 'for_each: the list is empty', now, ready) end
  local f = {}
  local h = redis.call('HGETALL', sk)
  for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
  local parallel = tonumber(f['max_parallel'] or '0')
  if parallel <= 0 then parallel = count end
  redis.call('HSET', sk, 'state', 'running', 'started_at', now, 'items', text, 'instances', count,
    'instances_max', math.max(count, tonumber(f['instances_max'] or '0')), 'map_done', 0, 'map_success', 0,
    'map_failed', 0, 'map_next', math.min(count, parallel), 'error', '')
  redis.call('HINCRBY', run_key(rid), 'unfinished', count)
  set_extra(rid, s, count - 1)
  event(rid, 'step', s, 'running', '', now)
  for i = 0, count - 1 do
    local name = instance_name(s, i)
    local ik = step_key(rid, name)
    local attempt = redis.call('HGET', ik, 'attempt') or '0'  -- a rerun's instances number attempts on
    -- An instance keeps only what differs from the defaults (see scheduler/records.py).
    hset_all(ik, {parent = s, index = tostring(i), state = 'pending', attempt = attempt,
      max_attempts = tostring(tonumber(attempt) + tonumber(f['retries'] or '0') + 1), retries = f['retries'] or '',
      rule = f['rule'] or '', queue = f['queue'], timeout = f['timeout'] or '', pool = f['pool'] or '',
      pool_slots = f['pool_slots'] or '', when = f['when'] or '', cancel = '', ended_at = '', started_at = '',
      outputs = '', outputs_sig = ''})
    if i < parallel then table.insert(ready, queue_step(rid, name, now)) end
  end
end

-- An instance of a mapped step ended: count it, queue the next one waiting for max_parallel, and end
-- the mapped step once every instance has (its state, its outputs as JSON arrays). The mapped step is
-- settled without being propagated: its instances were counted downstream one by one.
instance_ended = function(rid, s, state, now, ready)
  local sk = step_key(rid, s)
  redis.call('HINCRBY', sk, 'map_done', 1)
  if state == 'success' then redis.call('HINCRBY', sk, 'map_success', 1)
  elseif FAILED[state] then redis.call('HINCRBY', sk, 'map_failed', 1) end
  local count = tonumber(redis.call('HGET', sk, 'instances'))
  local nxt = tonumber(redis.call('HGET', sk, 'map_next'))
  while nxt < count do
    local name = instance_name(s, nxt)
    if redis.call('HGET', step_key(rid, name), 'state') ~= 'pending' then
      nxt = nxt + 1
    elseif cancel_requested(rid, name) then
      break  -- the canceller settles the waiting instances
    else
      nxt = nxt + 1
      table.insert(ready, queue_step(rid, name, now))
      break
    end
  end
  redis.call('HSET', sk, 'map_next', nxt)
  if tonumber(redis.call('HGET', sk, 'map_done')) < count then return end
  local seen = {}
  for i = 0, count - 1 do seen[redis.call('HGET', step_key(rid, instance_name(s, i)), 'state')] = true end
  local final = 'skipped'
  if seen['failed'] or seen['upstream_failed'] then final = 'failed'
  elseif seen['cancelled'] then final = 'cancelled'
  elseif seen['success'] then final = 'success' end
  local names = cjson.decode(redis.call('HGET', sk, 'output_names') or '[]')
  if #names > 0 then
    local gathered = {}
    for _, name in ipairs(names) do
      local values = {}
      for i = 0, count - 1 do
        local raw = redis.call('HGET', step_key(rid, instance_name(s, i)), 'outputs')
        local value = raw and cjson.decode(raw)[name]
        table.insert(values, type(value) == 'string' and json_string(value) or 'null')
      end
      table.insert(gathered, json_string(name) .. ':' .. json_string('[' .. table.concat(values, ',') .. ']'))
    end
    redis.call('HSET', sk, 'outputs', '{' .. table.concat(gathered, ',') .. '}')
  end
  settle(rid, s, final, now)
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
        maybe_end_run(nxt, now, ready)  -- a run whose roots all settled at once (empty fan-outs)
        break
      end
    end
  end
end

-- End the running attempt n of a step (already fenced by the caller) with an outcome:
-- success | failed | cancelled | lost (counts as a failed try) | requeue (handed back: does not count).
-- Returns {'retry', {ready entry of the next attempt}, delay} or {'done', state, ready entries}.
local function end_attempt(rid, s, n, outcome, now, delay)
  local sk = step_key(rid, s)
  local h = fields(sk, {'cancel', 'rule', 'parent', 'pool_held', 'max_attempts'})
  redis.call('ZREM', K.running(), member(rid, s, n))
  local freed = {}
  release_pool(rid, s, now, freed, h.pool_held or '')
  redis.call('HSET', attempt_key(rid, s, n), 'state', outcome, 'ended_at', now)
  local cancelled = cancel_requested(rid, s, h)
  local max_attempts = tonumber(h.max_attempts or '1')
  if outcome == 'requeue' and not cancelled then
    max_attempts = max_attempts + 1
    redis.call('HSET', sk, 'max_attempts', max_attempts)
    delay = 0
  end
  local new = outcome
  if outcome == 'lost' then new = 'failed' end
  if cancelled or outcome == 'cancelled' then new = 'cancelled'
  elseif (new == 'failed' or new == 'requeue') and tonumber(n) < max_attempts then
    local nxt = tonumber(n) + 1
    redis.call('HSET', sk, 'state', 'retrying', 'attempt', nxt, 'retry_in', delay)
    redis.call('ZADD', K.queued(), server_time() + tonumber(delay), member(rid, s, nxt))
    event(rid, 'step', s, 'retrying', tostring(nxt), now)
    return {'retry', {{rid, s, tostring(nxt), redis.call('HGET', sk, 'queue'), redis.call('HGET', sk, 'timeout') or ''}},
            tostring(delay), freed}
  end
  if new == 'requeue' then new = 'failed' end
  local ready = freed
  settle(rid, s, new, now, n)
  propagate(rid, s, new, now, ready)
  maybe_end_run(rid, now, ready)
  return {'done', new, ready}
end

-- The names of every step of a run, handler steps included (the one list retention and unstaging use).
local function run_step_names(rid)
  local rk = run_key(rid)
  local names = cjson.decode(redis.call('HGET', rk, 'steps') or '[]')
  for h, _ in pairs(cjson.decode(redis.call('HGET', rk, 'handlers') or '{}')) do table.insert(names, h) end
  for _, s in ipairs(cjson.decode(redis.call('HGET', rk, 'steps') or '[]')) do
    for i = 0, tonumber(redis.call('HGET', step_key(rid, s), 'instances_max') or '0') - 1 do
      table.insert(names, instance_name(s, i))
    end
  end
  return names
end

-- Delete a run and every key of it: the run hash, each step's hash and checkpoint, attempts and logs (handlers
-- included), its entries in the run, queued, running, SLA and active indexes, and the DAG's fires
-- and intervals entries that still name it. The one way a run is deleted (retention, unstaging).
local function delete_run(rid, fallback_fire)
  local rk = run_key(rid)
  local f = {}
  local run = redis.call('HGETALL', rk)
  for i = 1, #run, 2 do f[run[i]] = run[i + 1] end
  local doomed = {rk}
  for _, s in ipairs(run_step_names(rid)) do
    local sk = step_key(rid, s)
    local n = tonumber(redis.call('HGET', sk, 'attempt') or '0')
    if n > 0 then
      redis.call('ZREM', K.queued(), member(rid, s, n))
      redis.call('ZREM', K.running(), member(rid, s, n))
      redis.call('ZREM', K.pool_waiting(pool_of(sk)), member(rid, s, n))
    end
    drop_plan(redis.call('HGET', sk, 'plan'))
    table.insert(doomed, step_key(rid, s))
    table.insert(doomed, K.checkpoint(rid, s))
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
