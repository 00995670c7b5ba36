CREATE TABLE `archive_numbers` (
	`project_id` text NOT NULL,
	`month` text NOT NULL,
	`high_water` integer NOT NULL,
	PRIMARY KEY(`project_id`, `month`)
);
