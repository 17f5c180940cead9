-- Give up the leader lease, only if this id holds it.
-- ARGV: 1 prefix, 2 my id.  Returns 1 when released.
local current = redis.call('GET', K.leader())
if current and string.match(current, '^(.*)|%d+$') == ARGV[2] then return redis.call('DEL', K.leader()) end
return 0
