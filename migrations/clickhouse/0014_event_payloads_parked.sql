-- Where a month's partition of event_payloads waits, for a moment, while an archive job empties it
-- with a partition drop instead of a mutation (servers with MOVE PARTITION … TO TABLE): the same
-- columns, engine, partitioning and sorting key as event_payloads, as moving a partition needs.
-- Empty at rest; unused on servers that cannot move a partition.
CREATE TABLE IF NOT EXISTS event_payloads_parked (
  id UUID,
  project_id String,
  created_at_ms Int64,
  received_at_ms Int64,
  payload String,
  created_at DateTime MATERIALIZED toDateTime(intDiv(created_at_ms, 1000))
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(created_at)
ORDER BY (project_id, id);
