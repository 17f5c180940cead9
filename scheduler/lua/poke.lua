-- A sensor's poke said "not yet" (its container exited with the step's not_ready_exit_code): the attempt
-- stays the same but waits, holding no worker and no pool slot, until its next poke is due (the caller
-- parks it in the delayed set). Past the sensor's timeout it fails instead (reason sensor_timeout).
-- Fenced like finish.lua.
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 attempt, 5 now (ISO), 6 interval seconds, 7 timeout seconds (0: none),
--       8 first poke (epoch seconds, kept from the attempt's first poke), 9 retry delay,
--       10 holder ('' = no holder fence), 11.. record pairs
-- Returns: {'stale'} | {'waiting', {ready entry}, interval, pokes, freed} | like finish.lua (timed out)
local rid, s, n, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local sk, ak = step_key(rid, s), attempt_key(rid, s, n)
if redis.call('HGET', sk, 'state') ~= 'running' or redis.call('HGET', sk, 'attempt') ~= n then
  return {'stale'}
end
if not held_by(ak, ARGV[10]) then return {'stale'} end
local record = {}
for i = 11, #ARGV, 2 do table.insert(record, ARGV[i]); table.insert(record, ARGV[i + 1]) end
if #record > 0 then redis.call('HSET', ak, unpack(record)) end
redis.call('HSETNX', ak, 'sensor_since', ARGV[8])
local pokes = redis.call('HINCRBY', ak, 'pokes', 1)
local interval, timeout = tonumber(ARGV[6]), tonumber(ARGV[7])
local due = server_time() + interval
if timeout > 0 and due > tonumber(redis.call('HGET', ak, 'sensor_since')) + timeout then
  redis.call('HSET', ak, 'reason', 'sensor_timeout', 'error',
    'the condition did not hold within the sensor timeout of ' .. ARGV[7] .. 's (' .. pokes .. ' pokes)')
  return end_attempt(rid, s, n, 'failed', now, ARGV[9])
end
redis.call('ZREM', K.running(), member(rid, s, n))
local freed = {}
release_pool(rid, s, now, freed)
redis.call('HSET', sk, 'state', 'waiting')
redis.call('HSET', ak, 'state', 'waiting', 'next_poke', due)
redis.call('ZADD', K.queued(), due, member(rid, s, n))
event(rid, 'step', s, 'waiting', n, now)
return {'waiting', {{rid, s, n, redis.call('HGET', sk, 'queue'), redis.call('HGET', sk, 'timeout') or ''}},
        tostring(interval), pokes, freed}
