-- Where a month's partition of event_payloads waits, for a moment, while an archive job empties it
-- with a partition drop instead of a mutation (servers with MOVE PARTITION … TO TABLE): moving a
-- partition needs the same columns, engine, partitioning and sorting key, so the table is made as
-- a copy of event_payloads' structure. Empty at rest; unused on servers that cannot move a partition.
CREATE TABLE IF NOT EXISTS event_payloads_parked AS event_payloads;
