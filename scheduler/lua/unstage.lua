-- Take back a DAG's staged runs that have not been released: delete them as if never created (run,
-- steps, indexes, their fire's idempotency key, their RQ jobs) and move the DAG's cursor back to
-- where it was before they were staged, so that the scheduler evaluates those fires again (with the
-- new version, the new calendar, or not at all while paused). A run already released, or cancelled,
-- is left alone.
-- ARGV: 1 prefix, 2 dag, 3 RQ job key prefix.  Returns how many runs were taken back.
local dag = ARGV[2]
local dk = P .. ':dag:' .. dag
local taken, rewind, rewind_ts = 0, nil, nil
for _, rid in ipairs(redis.call('ZRANGE', dk .. ':staged', 0, -1)) do
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
    local run = redis.call('HGETALL', rk)
    local f = {}
    for i = 1, #run, 2 do f[run[i]] = run[i + 1] end
    local names = cjson.decode(f['steps'] or '[]')
    for h, _ in pairs(cjson.decode(f['handlers'] or '{}')) do table.insert(names, h) end
    for _, s in ipairs(names) do
      local n = redis.call('HGET', step_key(rid, s), 'attempt')
      if n and n ~= '0' then redis.call('ZREM', P .. ':queued', member(rid, s, n)) end
      redis.call('DEL', step_key(rid, s))
    end
    for _, entry in ipairs(cjson.decode(f['slas'] or '[]')) do redis.call('ZREM', P .. ':sla', entry[1]) end
    if f['fire_key'] and f['fire_key'] ~= '' and redis.call('HGET', dk .. ':fires', f['fire_key']) == rid then
      redis.call('HDEL', dk .. ':fires', f['fire_key'])
    end
    local interval = f['data_interval_start'] or ''
    if interval ~= '' and redis.call('HGET', dk .. ':intervals', interval) == rid then
      redis.call('HDEL', dk .. ':intervals', interval)
    end
    redis.call('SREM', dk .. ':active', rid)
    redis.call('ZREM', P .. ':runs', rid)
    redis.call('ZREM', dk .. ':runs', rid)
    redis.call('DEL', rk)
    if rewind == nil and f['staged_cursor'] ~= '' then rewind, rewind_ts = f['staged_cursor'], f['staged_cursor_ts'] end
    taken = taken + 1
  end
  redis.call('ZREM', dk .. ':staged', rid)
end
if rewind then redis.call('HSET', dk, 'cursor', rewind, 'cursor_ts', rewind_ts) end
return taken
