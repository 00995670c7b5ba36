CREATE TABLE `fleet_cursors` (
	`project_id` text NOT NULL,
	`device_id` text NOT NULL,
	`pending_from_ms` integer,
	`pending_to_ms` integer,
	`dirty` integer DEFAULT 0 NOT NULL,
	`lease_token` text,
	`lease_until` integer DEFAULT 0 NOT NULL,
	`seq` integer DEFAULT 0 NOT NULL,
	`updated_at` integer NOT NULL,
	PRIMARY KEY(`project_id`, `device_id`)
);
--> statement-breakpoint
CREATE TABLE `vehicles` (
	`project_id` text NOT NULL,
	`device_id` text NOT NULL,
	`name` text,
	`plate` text,
	`driver` text,
	`group` text,
	`timezone` text,
	`updated_at` integer NOT NULL,
	PRIMARY KEY(`project_id`, `device_id`)
);
--> statement-breakpoint
CREATE INDEX `vehicles_group_idx` ON `vehicles` (`project_id`,`group`);