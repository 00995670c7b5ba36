CREATE TABLE `rejected_rows` (
	`project_id` text NOT NULL,
	`source` text NOT NULL,
	`count` integer NOT NULL,
	`last_reason` text NOT NULL,
	`last_error` text NOT NULL,
	`last_at` integer NOT NULL,
	PRIMARY KEY(`project_id`, `source`)
);
--> statement-breakpoint
CREATE INDEX `rejected_rows_last_at_idx` ON `rejected_rows` (`last_at`);