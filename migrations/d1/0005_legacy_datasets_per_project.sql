-- Legacy datasets become per (project, dataset). Held rows already name their project; the old
-- per-name completion flag is given to the projects whose import set it (see the README).
DROP INDEX `held_legacy_events_dataset_idx`;--> statement-breakpoint
CREATE INDEX `held_legacy_events_project_dataset_idx` ON `held_legacy_events` (`project_id`,`dataset`,`seq`);--> statement-breakpoint
CREATE TABLE `__new_legacy_datasets` (
	`project_id` text NOT NULL,
	`dataset` text NOT NULL,
	`initial_migration_completed_at` integer,
	`held` integer DEFAULT 0 NOT NULL,
	PRIMARY KEY(`project_id`, `dataset`)
);
--> statement-breakpoint
-- A completed name is completed for every project with a succeeded import of it, at the end of
-- the first one of that project. Should no import of the name have succeeded (the flag is only ever set
-- by an import that then succeeds), each project that ran one keeps the old time; a flag no job
-- explains (its project is gone) is dropped.
INSERT INTO `__new_legacy_datasets` ("project_id", "dataset", "initial_migration_completed_at")
SELECT json_extract(j.params, '$.projectId'), d.dataset,
       coalesce(min(CASE WHEN j.state = 'succeeded' THEN j.ended_at END), d.initial_migration_completed_at)
  FROM `legacy_datasets` d
  JOIN `jobs` j ON j.type = 'legacy_import' AND json_extract(j.params, '$.dataset') = d.dataset
 WHERE d.initial_migration_completed_at IS NOT NULL
   AND json_extract(j.params, '$.projectId') IS NOT NULL
   AND (j.state = 'succeeded' OR NOT EXISTS (
         SELECT 1 FROM `jobs` s
          WHERE s.type = 'legacy_import' AND s.state = 'succeeded' AND json_extract(s.params, '$.dataset') = d.dataset))
 GROUP BY json_extract(j.params, '$.projectId'), d.dataset;--> statement-breakpoint
-- Every (project, dataset) with rows waiting gets its count.
INSERT INTO `__new_legacy_datasets` ("project_id", "dataset", "held")
SELECT project_id, dataset, count(*) FROM `held_legacy_events` WHERE true GROUP BY project_id, dataset
    ON CONFLICT ("project_id", "dataset") DO UPDATE SET "held" = excluded."held";--> statement-breakpoint
DROP TABLE `legacy_datasets`;--> statement-breakpoint
ALTER TABLE `__new_legacy_datasets` RENAME TO `legacy_datasets`;
