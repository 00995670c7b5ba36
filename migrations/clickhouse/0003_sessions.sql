-- Every change of a session is a new row with a higher version; reads take argMax(..., version)
-- per session id, so the current state needs no FINAL. merged_into names the surviving session.
CREATE TABLE IF NOT EXISTS sessions (
  project_id String,
  device_id String,
  id String,
  started_at_ms Int64,
  ended_at_ms Int64,
  event_count UInt64,
  ended UInt8,
  merged_into String,
  version UInt64,
  updated_at_ms Int64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (project_id, device_id, id);
