ALTER TABLE `fleet_cursors` ADD `deferred_since` integer;--> statement-breakpoint
CREATE INDEX `fleet_cursors_deferred` ON `fleet_cursors` (`deferred_since`) WHERE deferred_since IS NOT NULL;