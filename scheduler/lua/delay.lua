-- Park attempts that are due later (a retry after its backoff, a step after an outage) in the
-- delayed set, scored by Redis's own clock so that no two processes' clocks need agree.
-- ARGV: 1 prefix, then pairs of (delay seconds, entry).  Returns how many were parked.
for i = 2, #ARGV, 2 do redis.call('ZADD', K.delayed(), server_time() + tonumber(ARGV[i]), ARGV[i + 1]) end
return (#ARGV - 1) / 2
