-- A DAG's dataset-triggered run was created (or found, by its idempotency key): the events it used are
-- consumed. Only moves forward, so a late or repeated call changes nothing.
-- ARGV: 1 prefix, 2 dag, 3 JSON {dataset: sequence number}
-- Returns: how many datasets moved forward
local key, moved = K.dataset_seen(ARGV[2]), 0
for name, seq in pairs(cjson.decode(ARGV[3])) do
  if tonumber(redis.call('HGET', key, name) or '0') < tonumber(seq) then
    redis.call('HSET', key, name, seq)
    moved = moved + 1
  end
end
return moved
