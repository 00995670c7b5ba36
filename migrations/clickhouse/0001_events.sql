-- Query columns of every event. Raw payloads live apart in event_payloads.
-- ReplacingMergeTree collapses a redelivered copy of the same event (same sorting key).
CREATE TABLE IF NOT EXISTS events (
  id UUID,
  project_id String,
  device_id String,
  session_id String,
  profile_id String,
  type String,
  name String,
  created_at_ms Int64,
  received_at_ms Int64,
  synced_at_ms Int64,
  properties String,
  ref_id String,
  ip String,
  country String,
  region String,
  city String,
  timezone String,
  latitude Nullable(Float64),
  longitude Nullable(Float64),
  created_at DateTime MATERIALIZED toDateTime(intDiv(created_at_ms, 1000))
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(created_at)
ORDER BY (project_id, device_id, created_at_ms, id);
