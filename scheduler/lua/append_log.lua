-- Append to an attempt's log, never past its cap.
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 attempt, 5 chunk, 6 cap in bytes, 7 ttl seconds
-- Returns: bytes kept from this chunk.
local key = K.log(ARGV[2], ARGV[3], ARGV[4])
local length = redis.call('STRLEN', key)
local cap = tonumber(ARGV[6])
local marker = '\n[conveyor: log truncated at ' .. cap .. ' bytes]\n'
if length >= cap then return 0 end
local chunk = ARGV[5]
if length + #chunk > cap then chunk = string.sub(chunk, 1, cap - length) .. marker end
redis.call('APPEND', key, chunk)
if tonumber(ARGV[7]) > 0 then redis.call('EXPIRE', key, ARGV[7]) end
return #chunk
