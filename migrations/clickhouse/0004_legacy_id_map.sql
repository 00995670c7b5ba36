-- Legacy → new id mapping of imported datasets: the one translation point for realtime legacy events.
-- Rows are written at most once per (dataset, legacy_id) by the importer; ReplacingMergeTree
-- collapses any copy a crash could leave behind.
CREATE TABLE IF NOT EXISTS legacy_id_map (
  dataset String,
  legacy_id String,
  new_id UUID,
  project_id String,
  created_at_ms Int64
) ENGINE = ReplacingMergeTree()
ORDER BY (dataset, legacy_id);
