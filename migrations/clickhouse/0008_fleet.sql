-- Fleet telemetry derived from `position` events (DESIGN "Fleet telemetry"). Every table is a
-- ReplacingMergeTree(version): the recompute of a device (serialized by its D1 fleet cursor) writes
-- rows with a version that only grows, and reads take the highest version per key (LIMIT 1 BY);
-- `deleted` marks a stretch or trip a recompute removed. Times are Int64 epoch ms with a DateTime
-- derived from them for partitioning (18.16-compatible: no DateTime64, no LowCardinality).

-- The stretches of a device's history (src/fleet/trips.ts `Stretch`): where a recompute may start afresh.
CREATE TABLE IF NOT EXISTS fleet_stretches (
  project_id String,
  device_id String,
  start_ms Int64,
  end_ms Int64,
  last_accepted_ms Int64,
  counted_m Float64,
  end_reason String,
  deleted UInt8,
  version UInt64,
  start_at DateTime MATERIALIZED toDateTime(intDiv(start_ms, 1000))
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(start_at)
ORDER BY (project_id, device_id, start_ms);

-- Trips, keyed by their start; each carries its own 15-minute UTC mileage buckets so a day's
-- mileage row can be rebuilt from the trips touching it.
CREATE TABLE IF NOT EXISTS fleet_trips (
  project_id String,
  device_id String,
  start_at_ms Int64,
  end_at_ms Int64,
  distance_m Float64,
  max_speed_kmh Float64,
  start_lat Float64,
  start_lon Float64,
  end_lat Float64,
  end_lon Float64,
  end_reason String,
  bucket_ms Array(Int64),
  bucket_distance_m Array(Float64),
  bucket_moving_ms Array(Int64),
  deleted UInt8,
  version UInt64,
  start_at DateTime MATERIALIZED toDateTime(intDiv(start_at_ms, 1000))
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(start_at)
ORDER BY (project_id, device_id, start_at_ms);

-- Daily mileage aggregate: one row per (device, UTC day) holding that day's non-empty 15-minute
-- buckets (every UTC offset is a multiple of 15 min, so any zone's local days are exact sums of
-- them). /v1/mileage reads these rows only, never raw fixes. A day all of whose trips went away
-- is written again with empty arrays.
CREATE TABLE IF NOT EXISTS fleet_mileage (
  project_id String,
  device_id String,
  day Date,
  bucket_ms Array(Int64),
  distance_m Array(Float64),
  moving_ms Array(Int64),
  trip_starts Array(UInt32),
  version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (project_id, device_id, day)
SETTINGS index_granularity = 1024;

-- The live position of a device: the newest accepted fix of its last recompute, with the drift
-- state that gives its status at read time.
CREATE TABLE IF NOT EXISTS fleet_live (
  project_id String,
  device_id String,
  fix_id String,
  at_ms Int64,
  lat Float64,
  lon Float64,
  speed_kmh Nullable(Float64),
  heading Nullable(Float64),
  accuracy_m Nullable(Float64),
  altitude_m Nullable(Float64),
  ignition Nullable(UInt8),
  counted_lat Float64,
  counted_lon Float64,
  counted_at_ms Int64,
  moved_by_drift UInt8,
  version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (project_id, device_id);
