-- The id map is per (project, dataset): sorted by project first, so two projects importing the same
-- dataset name and keys keep a row each instead of collapsing into one. A sorting key cannot be
-- changed in place: the rows are copied into a new table that then takes the old one's name. Every
-- step may run again after a cut-short attempt. Pause legacy imports while this runs (README).
DROP TABLE IF EXISTS legacy_id_map_by_dataset;
DROP TABLE IF EXISTS legacy_id_map_by_project;
CREATE TABLE legacy_id_map_by_project (
  dataset String,
  legacy_id String,
  new_id UUID,
  project_id String,
  created_at_ms Int64
) ENGINE = ReplacingMergeTree()
ORDER BY (project_id, dataset, legacy_id);
INSERT INTO legacy_id_map_by_project SELECT dataset, legacy_id, new_id, project_id, created_at_ms FROM legacy_id_map;
RENAME TABLE legacy_id_map TO legacy_id_map_by_dataset, legacy_id_map_by_project TO legacy_id_map;
DROP TABLE legacy_id_map_by_dataset;
