ALTER TABLE `idempotency_keys` ADD `client_ip` text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE `idempotency_keys` ADD `user_agent` text DEFAULT '' NOT NULL;