ALTER TABLE `vehicles` ADD `mileage_rebuild_job` text;--> statement-breakpoint
-- Vehicles that may already have mileage rows of another zone: one with an unfinished zone
-- rebuild waits for it; one with a zone may have rows written before rows named their zone (UTC
-- days), so it is read widened ('unknown' matches no job) until its next zone change is rebuilt.
UPDATE `vehicles` SET `mileage_rebuild_job` = coalesce(
  (SELECT j.`id` FROM `jobs` j
    WHERE j.`type` = 'fleet_recompute' AND j.`state` NOT IN ('succeeded', 'failed', 'cancelled')
      AND json_extract(j.`params`, '$.zone') IS NOT NULL
      AND json_extract(j.`params`, '$.projectId') = `vehicles`.`project_id`
      AND json_extract(j.`params`, '$.deviceId') = `vehicles`.`device_id`
    ORDER BY j.`created_at` DESC LIMIT 1),
  CASE WHEN `timezone` IS NOT NULL AND `timezone` != 'UTC' THEN 'unknown' END);
