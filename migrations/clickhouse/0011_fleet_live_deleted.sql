-- A vehicle whose fixes the rules now all ignore (its project's rules were tightened) has no live
-- position: the recompute writes a newer row with `deleted = 1` over the old one, and reads skip it.
-- (18.16 has no ADD COLUMN IF NOT EXISTS; the runner takes a re-run that finds the column as done.)
ALTER TABLE fleet_live ADD COLUMN deleted UInt8 DEFAULT 0;
