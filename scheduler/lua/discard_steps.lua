-- Take back steps written ahead by create_steps.lua for a run that was not created (its idempotency key
-- was taken: another scheduler created that fire; or a step expired): delete them and give back the
-- plans they hold.
-- ARGV: 1 prefix, 2 run_id, 3 step names (JSON list)
-- Returns: how many steps were there
local rid, found = ARGV[2], 0
for _, s in ipairs(cjson.decode(ARGV[3])) do
  local sk = step_key(rid, s)
  local digest = redis.call('HGET', sk, 'plan')
  if digest then
    drop_plan(digest)
    redis.call('UNLINK', sk)
    found = found + 1
  end
end
return found
