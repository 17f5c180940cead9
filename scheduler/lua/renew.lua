-- A worker's heartbeat for the attempt it runs: push the lease's expiry out by the TTL.
-- ARGV: 1 prefix, 2 member (run|step|attempt), 3 lease ttl seconds, 4 holder (optional: the worker
--       renewing; another worker adopted the attempt, or it was handed over, when it no longer holds it)
-- Returns 1 while the lease is held, 0 once the attempt was declared lost (the worker must stop it),
-- -1 once another worker holds it (the worker must let the container run and stop following it).
local m = ARGV[2]
if not redis.call('ZSCORE', K.running(), m) then return 0 end
local rid, s, n = string.match(m, '^(.*)|(.*)|(%d+)$')
if not held_by(attempt_key(rid, s, n), ARGV[4]) then return -1 end
redis.call('ZADD', K.running(), server_time() + tonumber(ARGV[3]), m)
return 1
