-- Create a run and its steps and start it (or make it wait for max_active_runs), atomically.
-- With an idempotency key (a scheduled run's logical date), a second create for the same key is
-- a no-op that returns the first run's id: two schedulers can never create one fire twice.
-- ARGV: 1 prefix, 2 run_id, 3 now, 4 dag, 5 created (epoch seconds), 6 idempotency key or '',
--       7 interval start or '', 8 run fields (JSON object of strings),
--       9 steps (JSON list of [name, {field: string}])
-- Returns: {'exists', run_id} | {'created', ready entries}
local rid, now, dag, created, key, interval = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if key ~= '' then
  local existing = redis.call('HGET', P .. ':dag:' .. dag .. ':fires', key)
  if existing then return {'exists', existing} end
  redis.call('HSET', P .. ':dag:' .. dag .. ':fires', key, rid)
end
local function hset_all(k, fields)
  local flat = {}
  for f, v in pairs(fields) do table.insert(flat, f); table.insert(flat, v) end
  redis.call('HSET', k, unpack(flat))
end
hset_all(run_key(rid), cjson.decode(ARGV[8]))
for _, step in ipairs(cjson.decode(ARGV[9])) do hset_all(step_key(rid, step[1]), step[2]) end
redis.call('ZADD', P .. ':runs', created, rid)
redis.call('ZADD', P .. ':dag:' .. dag .. ':runs', created, rid)
if interval ~= '' then redis.call('HSET', P .. ':dag:' .. dag .. ':intervals', interval, rid) end
for _, entry in ipairs(cjson.decode(cjson.decode(ARGV[8])['slas'] or '[]')) do
  redis.call('ZADD', P .. ':sla', entry[2], entry[1])
end
event(rid, 'run', '', 'queued', '', now)
local ready = {}
start_or_wait(rid, now, ready)
return {'created', ready}
