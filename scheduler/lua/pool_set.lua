-- Define or resize a pool; freed capacity goes to waiting attempts at once.
-- ARGV: 1 prefix, 2 name, 3 slots (or -1 to remove the pool), 4 now
-- Returns: ready entries of attempts that got slots.
local pool, slots, now = ARGV[2], tonumber(ARGV[3]), ARGV[4]
if slots < 0 then redis.call('HDEL', K.pools(), pool) else redis.call('HSET', K.pools(), pool, slots) end
local ready = {}
fill_pool(pool, now, ready)
return ready
