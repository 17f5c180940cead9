-- Take or renew the scheduler's leader lease (see scheduler/leader.py).
-- ARGV: 1 prefix, 2 my id, 3 ttl ms.
-- Returns the fencing token while this id holds the lease (new or renewed), else 0.
local current = redis.call('GET', K.leader())
if current then
  local holder, token = string.match(current, '^(.*)|(%d+)$')
  if holder == ARGV[2] then
    redis.call('PEXPIRE', K.leader(), ARGV[3])
    return tonumber(token)
  end
  return 0
end
local token = redis.call('INCR', K.leader_token())
redis.call('SET', K.leader(), ARGV[2] .. '|' .. token, 'PX', ARGV[3])
return token
