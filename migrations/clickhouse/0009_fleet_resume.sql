-- Where the analysis of a device's last stretch stopped (src/fleet/store.ts `resumeText`): JSON on
-- the last stretch's row, '' on every other. An in-order batch continues from it and reads only its
-- own fixes; rows written before this column read as '' and are re-read once as before.
-- (18.16 has no ADD COLUMN IF NOT EXISTS; schema_migrations keeps this from running twice.)
ALTER TABLE fleet_stretches ADD COLUMN resume String DEFAULT '';
