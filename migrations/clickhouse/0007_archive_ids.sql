-- Scratch space of the archive job: the ids of one chunk, written just before the chunk's payloads
-- are cleared from event_payloads (`id IN (SELECT id FROM archive_ids WHERE batch = ...)`: a
-- mutation cannot read the request's external data) and dropped, by partition, right after.
-- `batch` is `<projectId>/<YYYY-MM>/<chunk number>`: a re-run of a cut-short clear writes the same
-- batch again (the same ids), so a leftover can never widen a delete.
CREATE TABLE IF NOT EXISTS archive_ids (
  batch String,
  id UUID
) ENGINE = MergeTree()
PARTITION BY batch
ORDER BY id;
