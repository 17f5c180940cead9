-- Save a running attempt's checkpoint (runner/checkpoints.py), fenced: only while the attempt is the
-- step's current one, still running and held by the worker saving it, so a stale worker never overwrites
-- a newer one.
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 attempt, 5 holder, 6 data (base64), 7 size in bytes, 8 saved at
-- Returns 1 when saved, 0 when refused.
local rid, s, n = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', step_key(rid, s), 'attempt') ~= n then return 0 end
local ak = attempt_key(rid, s, n)
if redis.call('HGET', ak, 'state') ~= 'running' or not held_by(ak, ARGV[5]) then return 0 end
redis.call('HSET', K.checkpoint(rid, s), 'data', ARGV[6], 'bytes', ARGV[7], 'at', ARGV[8], 'attempt', n)
return 1
