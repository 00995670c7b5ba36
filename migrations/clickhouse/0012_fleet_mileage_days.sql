-- Daily mileage rows sorted day-major (DESIGN "Fleet telemetry"): a fleet's read of N days reads
-- the project's rows of those days, about N per vehicle, where the device-major `fleet_mileage`
-- read every row of the touched month partitions. A read of one vehicle now reads the project's
-- rows of its days: the trade-off favours fleet reads. Same columns, engine and partitioning.
CREATE TABLE IF NOT EXISTS fleet_mileage_days (
  project_id String,
  device_id String,
  day Date,
  zone String,
  bucket_ms Array(Int64),
  distance_m Array(Float64),
  moving_ms Array(Int64),
  trip_starts Array(UInt32),
  version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (project_id, day, device_id, zone)
SETTINGS index_granularity = 1024;

-- The rows so far. A re-run (a run that stopped before its schema_migrations row) copies them
-- again: harmless, the copies have the same key and version and reads take one row per key
-- (LIMIT 1 BY), merges keep one.
INSERT INTO fleet_mileage_days (project_id, device_id, day, zone, bucket_ms, distance_m, moving_ms, trip_starts, version)
SELECT project_id, device_id, day, zone, bucket_ms, distance_m, moving_ms, trip_starts, version FROM fleet_mileage;
