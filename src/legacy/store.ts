// Where imported history lands: ClickHouse `events`, `event_payloads` and `legacy_id_map`, written
// exactly once per row.
import type { ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import type { DatasetKey } from './datasets';
import type { TranslatedRow } from './translate';

/**
 * Ids per existence check. The ids travel as external data and are read through `IN (SELECT value
 * FROM ids)`, a hashed set; `has(array, x)` scans the array per row (5000 ids over 200k rows: 8 s
 * against 20 ms on 18.16).
 */
const ID_CHECK_BATCH = 2000;

/**
 * An imported row as it is written: its id and time (for the existence checks), and its lines of
 * `events`, `legacy_id_map` and `event_payloads` already encoded. Encoded as soon as it is
 * translated, a row's objects die young instead of living through a step's reads and writes (in a
 * profiled self-throttled import the longest collection pause went from 26 to 16 ms; the readers'
 * p95 did not measurably change).
 */
export interface EncodedImportRow {
  id: string;
  created_at_ms: number;
  event: string;
  map: string;
  payload: string;
}

export function encodeImportedRow(t: TranslatedRow): EncodedImportRow {
  return { id: t.event.id, created_at_ms: t.event.created_at_ms, event: JSON.stringify(t.event), map: JSON.stringify(t.map), payload: JSON.stringify(t.payload) };
}

/** Ids among `rows` that the project's `table` already holds (a chunk written before a crash, or a re-run). */
async function existingIds(ch: ClickHouse, table: 'events' | 'event_payloads', projectId: string, rows: ReadonlyArray<{ id: string; created_at_ms: number }>): Promise<Set<string>> {
  const batches: Array<ReadonlyArray<{ id: string; created_at_ms: number }>> = [];
  for (let i = 0; i < rows.length; i += ID_CHECK_BATCH) batches.push(rows.slice(i, i + ID_CHECK_BATCH));
  const found = new Set<string>();
  await Promise.all(
    batches.map(async (batch) => {
      let from = Infinity;
      let to = -Infinity;
      for (const r of batch) {
        from = Math.min(from, r.created_at_ms);
        to = Math.max(to, r.created_at_ms);
      }
      const hits = await ch.query<{ id: string }>(
        `SELECT toString(id) AS id FROM ${table}
          WHERE project_id = {p:String}
            AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
            AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64}
            AND toString(id) IN (SELECT value FROM ids)`,
        { p: projectId, ...dateTimeBounds(from, to), from, to },
        { ids: batch.map((r) => r.id) },
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
export async function writeImportedChunk(ch: ClickHouse, projectId: string, rows: readonly EncodedImportRow[], verify: boolean): Promise<number> {
  if (rows.length === 0) return 0;
  const have = verify ? await existingIds(ch, 'events', projectId, rows) : new Set<string>();
  const fresh = have.size ? rows.filter((r) => !have.has(r.id)) : rows;
  const havePayloads = verify && fresh.length ? await existingIds(ch, 'event_payloads', projectId, fresh) : new Set<string>();
  // Both settle before a failure is reported: a retry's id check must not race an insert in flight.
  const settled = await Promise.allSettled([
    ch.insertJsonLines('legacy_id_map', jsonLines(rows, (r) => r.map)),
    ch.insertJsonLines(
      'event_payloads',
      jsonLines(
        havePayloads.size ? fresh.filter((r) => !havePayloads.has(r.id)) : fresh,
        (r) => r.payload,
      ),
    ),
  ]);
  for (const s of settled) if (s.status === 'rejected') throw s.reason;
  await ch.insertJsonLines(
    'events',
    jsonLines(fresh, (r) => r.event),
  );
  return fresh.length;
}

/** JSONEachRow text of one table's lines ('' for none). */
function jsonLines(rows: readonly EncodedImportRow[], line: (r: EncodedImportRow) => string): string {
  return rows.length ? `${rows.map(line).join('\n')}\n` : '';
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
