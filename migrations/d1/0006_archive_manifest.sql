CREATE TABLE `archive_chunks` (
	`project_id` text NOT NULL,
	`month` text NOT NULL,
	`number` integer NOT NULL,
	`key` text NOT NULL,
	`row_count` integer NOT NULL,
	`raw_bytes` integer NOT NULL,
	`compressed_bytes` integer NOT NULL,
	`sha256` text NOT NULL,
	`ids_checksum` text NOT NULL,
	`first_created_at_ms` integer NOT NULL,
	`last_created_at_ms` integer NOT NULL,
	`job_id` text NOT NULL,
	`created_at` integer NOT NULL,
	`verified_at` integer,
	`cleared_at` integer,
	`restored_at` integer,
	PRIMARY KEY(`project_id`, `month`, `number`)
);
--> statement-breakpoint
CREATE INDEX `archive_chunks_key_idx` ON `archive_chunks` (`key`);