-- A worker's heartbeat for the attempt it runs: push the lease's expiry out by the TTL.
-- ARGV: 1 prefix, 2 member (run|step|attempt), 3 lease ttl seconds
-- Returns 1 while the lease is held, 0 once the attempt was declared lost (the worker must stop it).
local m = ARGV[2]
if not redis.call('ZSCORE', K.running(), m) then return 0 end
redis.call('ZADD', K.running(), server_time() + tonumber(ARGV[3]), m)
return 1
