CREATE TABLE `idempotency_keys` (
	`project_id` text NOT NULL,
	`key` text NOT NULL,
	`route` text NOT NULL,
	`body_sha256` text NOT NULL,
	`received_at_ms` integer NOT NULL,
	`status` integer,
	`response` text,
	`created_at` integer NOT NULL,
	`held_at` integer NOT NULL,
	PRIMARY KEY(`project_id`, `key`)
);
--> statement-breakpoint
CREATE INDEX `idempotency_keys_created_idx` ON `idempotency_keys` (`created_at`);