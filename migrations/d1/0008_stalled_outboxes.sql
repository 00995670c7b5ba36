CREATE TABLE `stalled_outboxes` (
	`project_id` text NOT NULL,
	`device_id` text NOT NULL,
	`pending_rows` integer NOT NULL,
	`since` integer NOT NULL,
	`failures` integer NOT NULL,
	`last_error` text NOT NULL,
	`updated_at` integer NOT NULL,
	PRIMARY KEY(`project_id`, `device_id`)
);
--> statement-breakpoint
CREATE INDEX `stalled_outboxes_since_idx` ON `stalled_outboxes` (`since`);