-- Append to an attempt's log, never past its cap, and count the container's bytes it accounts for.
-- ``log_bytes`` on the attempt is how many bytes of the container's output the store has taken
-- (kept, or dropped by the cap): an adopter reads the container's output from there on, so that no
-- byte is stored twice or lost across an adoption.
-- ARGV: 1 prefix, 2 run_id, 3 step, 4 attempt, 5 chunk, 6 cap in bytes, 7 ttl seconds,
--       8 holder (optional: refused unless it holds the attempt), 9 container bytes this chunk stands for
--       (optional; default its length: masking changes lengths)
-- Returns: bytes kept from this chunk, or -1 when refused (another worker holds the attempt).
local ak = attempt_key(ARGV[2], ARGV[3], ARGV[4])
if not held_by(ak, ARGV[8]) then return -1 end
local key = K.log(ARGV[2], ARGV[3], ARGV[4])
local chunk = ARGV[5]
local raw = tonumber(ARGV[9] or '') or #chunk
if redis.call('EXISTS', ak) == 1 then redis.call('HINCRBY', ak, 'log_bytes', raw) end
local length = redis.call('STRLEN', key)
local cap = tonumber(ARGV[6])
local marker = '\n[conveyor: log truncated at ' .. cap .. ' bytes]\n'
if length >= cap then return 0 end
if length + #chunk > cap then chunk = string.sub(chunk, 1, cap - length) .. marker end
redis.call('APPEND', key, chunk)
if tonumber(ARGV[7]) > 0 then redis.call('EXPIRE', key, ARGV[7]) end
return #chunk
