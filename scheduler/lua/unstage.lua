-- Take back a DAG's staged runs that have not been released: delete them as if never created (run,
-- steps, indexes, their fire's idempotency key, their RQ jobs) and move the DAG's cursor back to
-- where it was before they were staged, so that the scheduler evaluates those fires again (with the
-- new version, the new calendar, or not at all while paused). A run already released, or cancelled,
-- is left alone.
-- ARGV: 1 prefix, 2 dag, 3 RQ job key prefix.  Returns how many runs were taken back.
local dag = ARGV[2]
local taken, rewind, rewind_ts = 0, nil, nil
for _, rid in ipairs(redis.call('ZRANGE', K.dag_staged(dag), 0, -1)) do
  local rk = run_key(rid)
  local held = cjson.decode(redis.call('HGET', rk, 'staged_jobs') or '[]')
  -- Not released yet while its lists exist (release.lua moves a whole list at once). Its ids stay in
  -- them: with their RQ jobs deleted, a worker that pops one skips it (RQ ignores a missing job).
  local waiting = #held > 0
  for _, m in ipairs(held) do
    if redis.call('EXISTS', m[1]) == 0 then waiting = false end
  end
  if waiting and redis.call('HGET', rk, 'state') ~= 'queued' then
    -- Cancelled while staged: keep the run as the user left it; its jobs need not run.
    for _, m in ipairs(held) do redis.call('DEL', ARGV[3] .. m[2]) end
    waiting = false
  end
  if waiting then
    for _, m in ipairs(held) do redis.call('DEL', ARGV[3] .. m[2]) end
    local f = delete_run(rid)
    if rewind == nil and f['staged_cursor'] ~= '' then rewind, rewind_ts = f['staged_cursor'], f['staged_cursor_ts'] end
    taken = taken + 1
  end
  redis.call('ZREM', K.dag_staged(dag), rid)
end
if rewind then redis.call('HSET', K.dag(dag), 'cursor', rewind, 'cursor_ts', rewind_ts) end
return taken
