-- A stopping worker hands its running attempt to another worker instead of stopping the container:
-- the lease expires now (by Redis's clock), so the next sweep of any worker adopts it (adopt.lua).
-- Until then nobody holds it: the old worker's late renewals, log writes and results are refused.
-- Should nobody adopt it, lose.lua ends it as 'requeue' (a hand-back does not count as a try).
-- ARGV: 1 prefix, 2 member (run|step|attempt), 3 now (ISO), 4 holder (the stopping worker)
-- Returns 1 when handed over, 0 when the attempt is not running under this holder.
local m = ARGV[2]
if not redis.call('ZSCORE', K.running(), m) then return 0 end
local rid, s, n = string.match(m, '^(.*)|(.*)|(%d+)$')
local ak = attempt_key(rid, s, n)
if not held_by(ak, ARGV[4]) then return 0 end
redis.call('ZADD', K.running(), server_time() - 0.001, m)
redis.call('HSET', ak, 'holder', '', 'handed_over', '1', 'handed_over_by', ARGV[4], 'handed_over_at', ARGV[3])
event(rid, 'step', s, 'handed_over', n, ARGV[3])
return 1
