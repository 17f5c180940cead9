-- Rerun steps of an ended run: new attempts in the same run, history kept (attempt numbers go on).
-- ARGV: 1 prefix, 2 run_id, 3 now, 4 steps to rerun (JSON list, in topological order; an instance
--       STEP[i] of a mapped step may be rerun alone, a mapped step itself expands again), 5 '1' to
--       resume: the steps keep their saved checkpoints (else they start clean), 6 new plans for some of
--       the steps (as create.lua's steps argument: {steps: [[name, {field: string}]], plans: {digest: text}})
-- Returns: {'running'} when the run has not ended | {'ok', ready entries}
local rid, now = ARGV[2], ARGV[3]
local rk = run_key(rid)
local state = redis.call('HGET', rk, 'state')
if not RUN_DONE[state] then return {'running'} end
local chosen, set = cjson.decode(ARGV[4]), {}
-- New plans (ctl rerun --latest, a pinned image): each step holds its new plan, gives back its old one.
local given = cjson.decode(ARGV[6] or '{"steps": [], "plans": {}}')
for _, step in ipairs(given['steps']) do
  local sk = step_key(rid, step[1])
  local old = redis.call('HGET', sk, 'plan')
  hold_plan(step[2]['plan'], given['plans'][step[2]['plan']])
  drop_plan(old)
  hset_all(sk, step[2])
end
for _, s in ipairs(chosen) do set[s] = true end
-- An instance STEP[i] rerun alone: its mapped step opens again and forgets the instance's result.
local reopened = 0
for _, s in ipairs(chosen) do
  local parent = redis.call('HGET', step_key(rid, s), 'parent')
  if parent and not set[parent] then
    local pk, old = step_key(rid, parent), redis.call('HGET', step_key(rid, s), 'state')
    if STEP_DONE[old] then
      redis.call('HINCRBY', pk, 'map_done', -1)
      if old == 'success' then redis.call('HINCRBY', pk, 'map_success', -1)
      elseif FAILED[old] then redis.call('HINCRBY', pk, 'map_failed', -1) end
    end
    if STEP_DONE[redis.call('HGET', pk, 'state')] then
      reopened = reopened + 1
      redis.call('HSET', pk, 'state', 'running', 'cancel', '0')
      redis.call('HDEL', pk, 'ended_at')
    end
  end
end
-- How a kept upstream step ended, as {done, success, failed}: a mapped step by its instances.
local function counts(u)
  local uk = step_key(rid, u)
  local n = tonumber(redis.call('HGET', uk, 'instances') or '0')
  local names = {u}
  if n > 0 then
    names = {}
    for i = 0, n - 1 do
      if not set[instance_name(u, i)] then table.insert(names, instance_name(u, i)) end
    end
  end
  local done, succ, fail = 0, 0, 0
  for _, name in ipairs(names) do
    local us = redis.call('HGET', step_key(rid, name), 'state')
    if STEP_DONE[us] then done = done + 1 end
    if us == 'success' then succ = succ + 1 elseif FAILED[us] then fail = fail + 1 end
  end
  return done, succ, fail
end
-- Reset the chosen steps; count how their kept upstream steps ended.
for _, s in ipairs(chosen) do
  local sk = step_key(rid, s)
  local done, succ, fail = 0, 0, 0
  for _, u in ipairs(cjson.decode(redis.call('HGET', sk, 'upstream') or '[]')) do
    if not set[u] then
      local d1, s1, f1 = counts(u)
      done, succ, fail = done + d1, succ + s1, fail + f1
    end
  end
  local attempt = tonumber(redis.call('HGET', sk, 'attempt'))
  redis.call('HSET', sk, 'state', 'pending', 'up_done', done, 'up_success', succ, 'up_failed', fail,
    'max_attempts', attempt + tonumber(redis.call('HGET', sk, 'retries') or '0') + 1, 'cancel', '0')
  redis.call('HDEL', sk, 'ended_at', 'started_at')
  if ARGV[5] ~= '1' then redis.call('DEL', K.checkpoint(rid, s)) end
end
-- The run is open again: count what is left and what already failed among the kept steps.
local failed = 0
for _, s in ipairs(cjson.decode(redis.call('HGET', rk, 'steps'))) do
  if not set[s] and FAILED[redis.call('HGET', step_key(rid, s), 'state')] then failed = failed + 1 end
end
redis.call('HSET', rk, 'state', 'running', 'cancel', '0', 'failed', failed, 'unfinished', #chosen + reopened,
  'handled', '0')
for name, _ in pairs(cjson.decode(redis.call('HGET', rk, 'handlers') or '{}')) do
  redis.call('HSET', step_key(rid, name), 'state', 'pending')
end
redis.call('HDEL', rk, 'ended_at')
redis.call('SADD', K.dag_active(redis.call('HGET', rk, 'dag')), rid)
event(rid, 'run', '', 'rerun', '', now)
local ready = {}
for _, s in ipairs(chosen) do
  local sk = step_key(rid, s)
  if redis.call('HGET', sk, 'state') == 'pending' then
    local decision = decide(rid, s)
    if decision == 'run' then
      start_step(rid, s, now, ready)
    elseif decision then
      settle(rid, s, decision, now)
      propagate(rid, s, decision, now, ready)
    end
  end
end
maybe_end_run(rid, now, ready)
return {'ok', ready}
