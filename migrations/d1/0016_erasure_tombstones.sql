CREATE TABLE `erasure_tombstones` (
	`job_id` text PRIMARY KEY NOT NULL,
	`project_id` text NOT NULL,
	`device_id` text,
	`profile_id` text,
	`before_ms` integer NOT NULL,
	`created_at` integer NOT NULL
);
--> statement-breakpoint
CREATE INDEX `erasure_tombstones_project_idx` ON `erasure_tombstones` (`project_id`);--> statement-breakpoint
CREATE INDEX `erasure_tombstones_created_idx` ON `erasure_tombstones` (`created_at`);