-- An external producer's event of a dataset (ctl dataset emit, POST /api/v1/datasets/NAME/events).
-- ARGV: 1 prefix, 2 dataset, 3 now (ISO), 4 payload (JSON text, '' for none), 5 who emitted it
-- Returns: the event's JSON
local payload = nil
if ARGV[4] ~= '' then payload = cjson.decode(ARGV[4]) end
return record_dataset(ARGV[2], {run = '', dag = '', step = '', logical_date = '', at = ARGV[3],
  payload = payload, source = ARGV[5]})
