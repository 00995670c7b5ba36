CREATE TABLE `held_legacy_events` (
	`seq` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`dataset` text NOT NULL,
	`legacy_id` text NOT NULL,
	`project_id` text NOT NULL,
	`device_id` text NOT NULL,
	`gap_ms` integer NOT NULL,
	`event` text NOT NULL,
	`held_at` integer NOT NULL
);
--> statement-breakpoint
CREATE INDEX `held_legacy_events_dataset_idx` ON `held_legacy_events` (`dataset`,`seq`);--> statement-breakpoint
CREATE TABLE `jobs` (
	`id` text PRIMARY KEY NOT NULL,
	`type` text NOT NULL,
	`state` text NOT NULL,
	`params` text NOT NULL,
	`cursor` text,
	`max_key` text,
	`rows_processed` integer DEFAULT 0 NOT NULL,
	`rows_total` integer,
	`rate_per_sec` integer,
	`eta_sec` integer,
	`attempts` integer DEFAULT 0 NOT NULL,
	`error` text,
	`lease_version` integer DEFAULT 0 NOT NULL,
	`lease_until` integer DEFAULT 0 NOT NULL,
	`created_at` integer NOT NULL,
	`started_at` integer,
	`ended_at` integer,
	`last_update_at` integer NOT NULL
);
--> statement-breakpoint
CREATE INDEX `jobs_state_idx` ON `jobs` (`state`);--> statement-breakpoint
CREATE TABLE `legacy_datasets` (
	`dataset` text PRIMARY KEY NOT NULL,
	`initial_migration_completed_at` integer
);
