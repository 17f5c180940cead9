-- An attempt ended. Fenced: a result for any attempt but the running one is ignored (a late
-- result of an attempt declared lost, or of a duplicate delivery, changes nothing), and so is a
-- result from a worker that no longer holds the attempt (another worker adopted it).
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 attempt, 5 outcome (success|failed|cancelled|requeue), 6 now,
--       7 retry delay in seconds, 8 holder ('' = no holder fence), 9.. attempt record as field, value pairs
--       ('' removes the field: records keep no empty fields)
--       (a successful attempt's 'outputs', a JSON object, and 'outputs_sig', their signature or '' for none,
--       are also kept on the step, in the same transition)
-- Returns: {'stale'} | {'retry', {next attempt's ready entry}, delay} | {'done', state, ready entries}
local rid, s, n, outcome, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local sk = step_key(rid, s)
local h = fields(sk, {'produces', 'attempt', 'state'})
if h.state ~= 'running' or h.attempt ~= n then return {'stale'} end
if not held_by(attempt_key(rid, s, n), ARGV[8]) then return {'stale'} end
local record = {}
for i = 9, #ARGV, 2 do
  record[ARGV[i]] = ARGV[i + 1]
  -- A successful attempt's outputs become the step's: what downstream steps (and their reruns) read.
  if ARGV[i] == 'outputs' and outcome == 'success' and ARGV[i + 1] ~= '' then
    redis.call('HSET', sk, 'outputs', ARGV[i + 1])
  elseif ARGV[i] == 'outputs_sig' and outcome == 'success' then
    hset_all(sk, {outputs_sig = ARGV[i + 1]})  -- '' (an unsigned worker's outputs) removes an older one
  end
end
hset_all(attempt_key(rid, s, n), record)  -- an empty value is no field (a sensor's last poke's reason goes)
-- A successful producer's datasets get their event in this same transition (nothing lost, nothing twice).
if outcome == 'success' then
  for _, name in ipairs(cjson.decode(h.produces or '[]')) do
    local run = redis.call('HMGET', run_key(rid), 'dag', 'logical_date')
    record_dataset(name, {run = rid, dag = run[1], step = s, logical_date = run[2] or '', at = now})
  end
end
return end_attempt(rid, s, n, outcome, now, ARGV[7])
