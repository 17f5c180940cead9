-- Move a DAG's schedule cursor forward, never back: a slow second scheduler cannot rewind it.
-- ARGV: 1 prefix, 2 dag, 3 to (epoch seconds), 4 to (ISO, UTC).
local dk = K.dag(ARGV[2])
local c = redis.call('HGET', dk, 'cursor_ts')
if (not c) or tonumber(c) < tonumber(ARGV[3]) then redis.call('HSET', dk, 'cursor', ARGV[4], 'cursor_ts', ARGV[3]) end
return 1
