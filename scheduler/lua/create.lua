-- Create a run and its steps and start it (or make it wait for max_active_runs), atomically.
-- With an idempotency key (a scheduled run's logical date), a second create for the same key is
-- a no-op that returns the first run's id: two schedulers can never create one fire twice.
-- ARGV: 1 prefix, 2 run_id, 3 now, 4 dag, 5 created (epoch seconds), 6 idempotency key or '',
--       7 interval start or '', 8 run fields (JSON object of strings),
--       9 steps (JSON list of [name, {field: string}])
-- Returns: {'exists', run_id} | {'created', ready entries}
local rid, now = ARGV[2], ARGV[3]
local existing = insert_run(rid, now, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
if existing then return {'exists', existing} end
local ready = {}
start_or_wait(rid, now, ready)
maybe_end_run(rid, now, ready)  -- nothing to run (every root a fan-out over an empty list): it ends now
return {'created', ready}
