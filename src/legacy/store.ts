// Where imported history lands: ClickHouse `events`, `event_payloads` and `legacy_id_map`, written
// exactly once per row.
import type { ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import type { DatasetKey } from './datasets';
import { IMPORT_EVENT_COLUMNS, IMPORT_MAP_COLUMNS, IMPORT_PAYLOAD_COLUMNS, type EncodedRows } from './encode';

/**
 * Ids per existence check. The ids travel as external data and are read through `IN (SELECT value
 * FROM ids)`, a hashed set; `has(array, x)` scans the array per row (5000 ids over 200k rows: 8 s
 * against 20 ms on 18.16).
 */
const ID_CHECK_BATCH = 2000;

/** The lines of `text` (`count` of them, each ending with a line feed) whose index `keep` accepts. */
function keepLines(text: string, count: number, keep: (i: number) => boolean): string {
  const lines = text.split('\n');
  lines.pop();
  // Line i must be row i: a text of another length would drop the wrong rows.
  if (lines.length !== count) throw new Error(`an encoded step has ${lines.length} lines for ${count} rows`);
  const kept = lines.filter((_, i) => keep(i));
  return kept.length ? `${kept.join('\n')}\n` : '';
}

/** Ids among the rows (ids and times, index for index) that the project's `table` already holds (a chunk written before a crash, or a re-run). */
async function existingIds(ch: ClickHouse, table: 'events' | 'event_payloads', projectId: string, ids: readonly string[], times: readonly number[]): Promise<Set<string>> {
  const found = new Set<string>();
  const batches: Array<[number, number]> = [];
  for (let i = 0; i < ids.length; i += ID_CHECK_BATCH) batches.push([i, Math.min(ids.length, i + ID_CHECK_BATCH)]);
  await Promise.all(
    batches.map(async ([start, end]) => {
      let from = Infinity;
      let to = -Infinity;
      for (let i = start; i < end; i++) {
        from = Math.min(from, times[i]!);
        to = Math.max(to, times[i]!);
      }
      const hits = await ch.query<{ id: string }>(
        `SELECT toString(id) AS id FROM ${table}
          WHERE project_id = {p:String}
            AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
            AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64}
            AND toString(id) IN (SELECT value FROM ids)`,
        { p: projectId, ...dateTimeBounds(from, to), from, to },
        { ids: ids.slice(start, end) },
      );
      for (const h of hits) found.add(h.id);
    }),
  );
  return found;
}

/**
 * Writes one chunk of imported rows. Ids are deterministic; when the chunk may have been written
 * before (`verify`: a replay after a crash or failure, or an earlier import into the project),
 * rows already present are skipped, so a replay or a re-run adds nothing. Mapping rows are written
 * for the whole chunk every time — a copy collapses in the ReplacingMergeTree — so an event that
 * landed in a failed attempt never leaves its mapping behind.
 *
 * Raw payloads follow the event's decision and land before it: an event present means its payload
 * was written too (it may since have been archived to R2 and cleared, so it is never written
 * again); for an event not yet present, a payload that a failed attempt already wrote is not
 * written twice.
 */
export async function writeImportedChunk(ch: ClickHouse, projectId: string, rows: EncodedRows, verify: boolean): Promise<number> {
  const { ids, createdAtMs } = rows;
  if (ids.length === 0) return 0;
  const have = verify ? await existingIds(ch, 'events', projectId, ids, createdAtMs) : new Set<string>();
  let { events, payloads } = rows;
  let freshIds = ids;
  let freshTimes = createdAtMs;
  if (have.size) {
    const isFresh = (i: number) => !have.has(ids[i]!);
    events = keepLines(events, ids.length, isFresh);
    payloads = keepLines(payloads, ids.length, isFresh);
    freshIds = ids.filter((_, i) => isFresh(i));
    freshTimes = createdAtMs.filter((_, i) => isFresh(i));
  }
  if (verify && freshIds.length > 0) {
    const havePayloads = await existingIds(ch, 'event_payloads', projectId, freshIds, freshTimes);
    if (havePayloads.size) payloads = keepLines(payloads, freshIds.length, (i) => !havePayloads.has(freshIds[i]!));
  }
  const inserted = [ch.insertTabSeparated('legacy_id_map', IMPORT_MAP_COLUMNS, rows.maps), ch.insertTabSeparated('event_payloads', IMPORT_PAYLOAD_COLUMNS, payloads)];
  // Both settle before a failure is reported: a retry's id check must not race an insert in flight.
  const settled = await Promise.allSettled(inserted);
  for (const s of settled) if (s.status === 'rejected') throw s.reason;
  await ch.insertTabSeparated('events', IMPORT_EVENT_COLUMNS, events);
  return freshIds.length;
}

/** New ids of a project's legacy rows of a dataset (the same name in another project is another dataset). */
export async function lookupNewIds(ch: ClickHouse, key: DatasetKey, legacyIds: readonly string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (let i = 0; i < legacyIds.length; i += ID_CHECK_BATCH) {
    const rows = await ch.query<{ legacy_id: string; new_id: string }>(
      `SELECT legacy_id, toString(new_id) AS new_id FROM legacy_id_map
        WHERE project_id = {p:String} AND dataset = {d:String} AND legacy_id IN (SELECT value FROM ids)
        LIMIT 1 BY legacy_id`,
      { p: key.projectId, d: key.dataset },
      { ids: [...new Set(legacyIds.slice(i, i + ID_CHECK_BATCH))] },
    );
    for (const r of rows) out.set(r.legacy_id, r.new_id);
  }
  return out;
}

/** Legacy rows of a project's dataset that have a mapping. */
export async function countMapped(ch: ClickHouse, key: DatasetKey): Promise<number> {
  const [r] = await ch.query<{ n: number | string }>(
    'SELECT uniqExact(legacy_id) AS n FROM legacy_id_map WHERE project_id = {p:String} AND dataset = {d:String}',
    { p: key.projectId, d: key.dataset },
  );
  return Number(r?.n ?? 0);
}
