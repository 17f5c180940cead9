-- Append to an attempt's log, never past its cap.
-- KEYS: 1 log key.  ARGV: 1 prefix (unused), 2 chunk, 3 cap in bytes, 4 ttl seconds
-- Returns: bytes kept from this chunk.
local length = redis.call('STRLEN', KEYS[1])
local cap = tonumber(ARGV[3])
local marker = '\n[conveyor: log truncated at ' .. cap .. ' bytes]\n'
if length >= cap then return 0 end
local chunk = ARGV[2]
if length + #chunk > cap then chunk = string.sub(chunk, 1, cap - length) .. marker end
redis.call('APPEND', KEYS[1], chunk)
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return #chunk
