-- Daily mileage rows keyed by the calendar day of the vehicle's registry time zone (DESIGN "Fleet
-- telemetry"): `zone` names the zone a row's `day` is in. Rows written before this column read as
-- '' and are UTC days. `zone` joins the sorting key, so rows of two zones for the same date (a
-- vehicle whose zone changed, until the rebuild removes the old ones) are never merged into one.
-- A column added to the sorting key may have no default expression (both generations refuse it),
-- hence '' rather than DEFAULT 'UTC'. (18.16 has no ADD COLUMN IF NOT EXISTS; the runner takes a
-- re-run that finds the column as done.)
ALTER TABLE fleet_mileage ADD COLUMN zone String, MODIFY ORDER BY (project_id, device_id, day, zone);
