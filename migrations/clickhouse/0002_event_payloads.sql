-- Raw payload of each event as received, by month: archived to R2, then deleted by id, or by partition when a month holds nothing else (see 0014).
CREATE TABLE IF NOT EXISTS event_payloads (
  id UUID,
  project_id String,
  created_at_ms Int64,
  received_at_ms Int64,
  payload String,
  created_at DateTime MATERIALIZED toDateTime(intDiv(created_at_ms, 1000))
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(created_at)
ORDER BY (project_id, id);
