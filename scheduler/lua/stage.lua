-- Write a scheduled run ahead of its due time: the run and its steps exactly as create.lua writes
-- them, its root attempts queued, but their RQ job ids held in a list per queue and due time
-- ({P}:staged:QUEUE|DUE, indexed by due time in {P}:staged), not on the queues. release.lua moves them at the due time in bulk, so that thousands of runs due at one
-- minute boundary reach the workers within milliseconds of it. Refused when the DAG was paused,
-- changed or re-evaluated (a new calendar or outage) since it was read: unstage.lua removes what
-- was staged before such a change, so a staged run never outlives the reason it was staged for.
-- Only for DAGs without max_active_runs (a waiting run would otherwise start early).
-- ARGV: 1-9 as create.lua (5 created = the due time), 10 due (epoch seconds, the scheduler's clock,
--       always written the same way: it names the list),
--       11 DAG version, 12 scheduling epoch the DAG was read under, 13 staged at (ISO),
--       14 cursor to move to (ISO, UTC)
-- Returns: {'exists', run_id} | {'refused', why} | {'staged', ready entries}
local rid, now, dag, due = ARGV[2], ARGV[3], ARGV[4], ARGV[10]
local dk = K.dag(dag)
if redis.call('HGET', dk, 'paused') == '1' then return {'refused', 'paused'} end
if redis.call('HGET', dk, 'deactivated') == '1' then return {'refused', 'deactivated'} end
if redis.call('HGET', dk, 'latest') ~= ARGV[11] then return {'refused', 'changed'} end
if (redis.call('GET', K.sched_epoch()) or '0') ~= ARGV[12] then return {'refused', 'rescheduled'} end
local existing = insert_run(rid, now, dag, ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
if existing then return {'exists', existing} end
local ready = {}
activate(rid, now, ready)
maybe_end_run(rid, now, ready)
local held = {}
for _, e in ipairs(ready) do
  local list, job = K.staged_list(e[4], due), job_id(e[1], e[2], e[3])
  redis.call('RPUSH', list, job)
  redis.call('ZADD', K.staged(), due, e[4] .. '|' .. due)
  table.insert(held, {list, job})
end
redis.call('ZREMRANGEBYSCORE', K.dag_staged(dag), '-inf', '(' .. due)
redis.call('ZADD', K.dag_staged(dag), due, rid)
redis.call('HSET', run_key(rid), 'staged_jobs', cjson.encode(held), 'staged_at', ARGV[13], 'staged_due', due,
  'staged_cursor', redis.call('HGET', dk, 'cursor') or '',
  'staged_cursor_ts', redis.call('HGET', dk, 'cursor_ts') or '')
local c = redis.call('HGET', dk, 'cursor_ts')
if (not c) or tonumber(c) < tonumber(due) then redis.call('HSET', dk, 'cursor', ARGV[14], 'cursor_ts', due) end
return {'staged', ready}
