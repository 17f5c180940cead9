-- Write some steps of a new run ahead of create.lua, for a run too large for one script: thousands of
-- steps written by one script would hold Redis (and every worker's lease renewal) for most of a second.
-- Each step hash is written as create.lua writes it, and its plan unless stored already; both expire
-- after ARGV[3] seconds unless create.lua, the one script that makes the run exist, keeps them
-- (PERSIST, and a reference on the plan): nobody sees these steps before their run exists, and a
-- creation that never finished leaves nothing behind for long.
-- ARGV: 1 prefix, 2 run_id, 3 ttl (seconds), 4 steps ({steps: [[name, {field: string}]], plans: {digest: text}})
-- Returns: the number of steps written
local rid, ttl = ARGV[2], ARGV[3]
local given = cjson.decode(ARGV[4])
for digest, text in pairs(given['plans']) do
  local pk = K.plan(digest)
  if redis.call('TTL', pk) == -1 then
    redis.call('SET', pk, text, 'KEEPTTL')  -- kept by other runs already (rewritten: see hold_plan)
  else
    redis.call('SET', pk, text, 'EX', ttl)
  end
end
local written = 0
for _, step in ipairs(given['steps']) do
  local k, flat = step_key(rid, step[1]), {}
  for f, v in pairs(step[2]) do table.insert(flat, f); table.insert(flat, v) end
  redis.call('HSET', k, unpack(flat))
  redis.call('EXPIRE', k, ttl)
  written = written + 1
end
return written
