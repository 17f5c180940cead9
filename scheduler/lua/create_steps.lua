-- Write some steps of a new run ahead of create.lua, for a run too large for one script: thousands of
-- steps written by one script would hold Redis (and every worker's lease renewal) for most of a second.
-- Each step hash is written as create.lua writes it and expires after ARGV[3] seconds unless create.lua,
-- the one script that makes the run exist, keeps it (PERSIST): nobody sees these steps before their run
-- exists, and a creation that never finished leaves no step behind for long. Their plans are stored and
-- counted here, chunk by chunk (create.lua then holds Redis for one command per step, as before plans were
-- shared); a creation that does not happen gives them back (discard_steps.lua). Only a client that dies
-- between these chunks and create.lua leaves a count too high: its plans stay (never one too few).
-- ARGV: 1 prefix, 2 run_id, 3 ttl (seconds), 4 steps ({steps: [[name, {field: string}]], plans: {digest: text}})
-- Returns: the number of steps written
local rid, ttl = ARGV[2], ARGV[3]
local given = cjson.decode(ARGV[4])
local written = 0
for _, step in ipairs(given['steps']) do
  local k, flat = step_key(rid, step[1]), {}
  for f, v in pairs(step[2]) do table.insert(flat, f); table.insert(flat, v) end
  redis.call('HSET', k, unpack(flat))
  redis.call('EXPIRE', k, ttl)
  if step[2]['plan'] then hold_plan(step[2]['plan'], given['plans'][step[2]['plan']]) end
  written = written + 1
end
return written
