-- SLAs and deadlines that fell due: a step SLA is missed unless the step succeeded; a deadline is
-- missed unless the run ended. Each entry is judged once (ZREM), whoever sweeps. A miss is recorded
-- on the step (or run), as an event ('sla_miss'), and fires the DAG's on_sla_miss handler once per run.
-- ARGV: 1 prefix, 2 now (ISO), 3 limit
-- Returns: the misses as {run_id, step ('' for the deadline), dag, ready entries of handlers}
local now, misses = ARGV[2], {}
local t = redis.call('TIME')
local due = redis.call('ZRANGEBYSCORE', K.sla(), '-inf', tonumber(t[1]) + tonumber(t[2]) / 1000000,
  'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do
  redis.call('ZREM', K.sla(), m)
  local rid, s = string.match(m, '^(.*)|(.*)$')
  local rk = run_key(rid)
  local state = redis.call('HGET', rk, 'state')
  local missed
  if s == '' then
    missed = not RUN_DONE[state]
    if missed then redis.call('HSET', rk, 'deadline_missed', now) end
  else
    missed = state and redis.call('HGET', step_key(rid, s), 'state') ~= 'success'
    if missed then redis.call('HSET', step_key(rid, s), 'sla_missed', now) end
  end
  if missed then
    event(rid, 'step', s, 'sla_miss', '', now)
    local ready = {}
    local handlers = cjson.decode(redis.call('HGET', rk, 'handlers') or '{}')
    if handlers['_on_sla_miss'] and redis.call('HGET', step_key(rid, '_on_sla_miss'), 'state') == 'pending'
        and (state == 'queued' or state == 'running') then
      redis.call('HINCRBY', rk, 'unfinished', 1)
      table.insert(ready, queue_step(rid, '_on_sla_miss', now))
    end
    table.insert(misses, {rid, s, redis.call('HGET', rk, 'dag') or '', ready})
  end
end
return misses
