-- Create a run and its steps and start it (or make it wait for max_active_runs), atomically.
-- With an idempotency key (a scheduled run's logical date), a second create for the same key is
-- a no-op that returns the first run's id: two schedulers can never create one fire twice.
-- A large run's steps are written ahead in chunks by create_steps.lua (expiring) and named in ARGV[10]:
-- this script checks they are all there, then keeps them, all in the one atomic step that makes the run
-- exist, so that from the outside a run appears whole or not at all.
-- ARGV: 1 prefix, 2 run_id, 3 now, 4 dag, 5 created (epoch seconds), 6 idempotency key or '',
--       7 interval start or '', 8 run fields (JSON object of strings),
--       9 steps ({steps: [[name, {field: string}]], plans: {digest: plan text}}: see scheduler/records.py),
--       10 steps written ahead (JSON list of names; optional: their plans too, expiring)
-- Returns: {'exists', run_id} | {'created', ready entries} | {'incomplete', step} (a step written ahead
--          is gone: nothing was created)
local rid, now = ARGV[2], ARGV[3]
local ahead = ARGV[10] and cjson.decode(ARGV[10]) or {}
for _, s in ipairs(ahead) do  -- all there (a step and its plan), or create nothing
  local digest = redis.call('HGET', step_key(rid, s), 'plan')
  if not digest or redis.call('EXISTS', K.plan(digest)) == 0 then return {'incomplete', s} end
end
local existing = insert_run(rid, now, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
if existing then return {'exists', existing} end  -- the caller deletes the steps it wrote ahead
for _, s in ipairs(ahead) do
  redis.call('PERSIST', step_key(rid, s))
  hold_plan(redis.call('HGET', step_key(rid, s), 'plan'), nil)
end
local ready = {}
start_or_wait(rid, now, ready)
maybe_end_run(rid, now, ready)  -- nothing to run (every root a fan-out over an empty list): it ends now
return {'created', ready}
