-- Retention: delete an ended run and every key of it (see delete_run in lib.lua). A run that has not
-- ended is left alone, so pruning never races a run that is still going.
-- ARGV: 1 prefix, 2 run_id, 3 its fire's key if the run has no fire_key field (or '').  Returns 1 when the run was deleted, 0 when it has not ended.
local rid = ARGV[2]
local state = redis.call('HGET', run_key(rid), 'state')
if state and not RUN_DONE[state] then return 0 end
delete_run(rid, ARGV[3])
return 1
