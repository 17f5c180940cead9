-- Remove and return the delayed attempts that are due (by Redis's clock), at most ARGV[2].
-- ARGV: 1 prefix, 2 limit.
local due = redis.call('ZRANGEBYSCORE', K.delayed(), '-inf', server_time(), 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', K.delayed(), unpack(due)) end
return due
