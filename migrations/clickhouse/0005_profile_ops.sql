-- Profile operations (identify, increment, decrement), copied from events as they are inserted.
-- A profile is folded from its operations in event-time order at read time, so concurrent devices
-- never race on a read-modify-write; a redelivered copy collapses by id (read with LIMIT 1 BY id).
CREATE TABLE IF NOT EXISTS profile_ops (
  project_id String,
  profile_id String,
  id UUID,
  type String,
  created_at_ms Int64,
  properties String
) ENGINE = ReplacingMergeTree()
ORDER BY (project_id, profile_id, id);

CREATE MATERIALIZED VIEW IF NOT EXISTS profile_ops_mv TO profile_ops AS
SELECT project_id, profile_id, id, type, created_at_ms, properties
  FROM events
 WHERE type IN ('identify', 'increment', 'decrement') AND profile_id != '';
