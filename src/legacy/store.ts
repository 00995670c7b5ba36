// Where imported history lands: ClickHouse `events`, `event_payloads` and `legacy_id_map`, written
// exactly once per row.
import { tsvField, type ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import type { DatasetKey } from './datasets';
import type { LegacyImportParams } from './params';
import type { LegacyRow } from './source';
import { legacyColumnsJson, legacyIdentity } from './translate';

/**
 * Ids per existence check. The ids travel as external data and are read through `IN (SELECT value
 * FROM ids)`, a hashed set; `has(array, x)` scans the array per row (5000 ids over 200k rows: 8 s
 * against 20 ms on 18.16).
 */
const ID_CHECK_BATCH = 2000;

/**
 * An imported row as it is written: its id and time (for the existence checks), and its
 * TabSeparated lines of `events`, `legacy_id_map` and `event_payloads` (columns below). Encoded as
 * soon as the row is read, a row's objects die young instead of living through a step's reads and
 * writes (in a profiled self-throttled import the longest collection pause went from 26 to 16 ms).
 */
export interface EncodedImportRow {
  id: string;
  created_at_ms: number;
  event: string;
  map: string;
  payload: string;
}

export const IMPORT_EVENT_COLUMNS = [
  'id',
  'project_id',
  'device_id',
  'session_id',
  'profile_id',
  'type',
  'name',
  'created_at_ms',
  'received_at_ms',
  'synced_at_ms',
  'properties',
  'ref_id',
  'ip',
  'country',
  'region',
  'city',
  'timezone',
  'latitude',
  'longitude',
] as const;
export const IMPORT_MAP_COLUMNS = ['dataset', 'legacy_id', 'new_id', 'project_id', 'created_at_ms'] as const;
export const IMPORT_PAYLOAD_COLUMNS = ['id', 'project_id', 'created_at_ms', 'received_at_ms', 'payload'] as const;

/**
 * The encoder of one step's rows, imported at `importedAtMs`: each row straight to its three
 * TabSeparated lines, the same rows as translateRow's (test/legacy-rows.test.ts holds them equal).
 * TabSeparated rather than JSONEachRow: no field names, and the properties and payload JSON only
 * escaped where they hold a backslash, never quoted again; both cheaper to make here and for
 * ClickHouse to read. Throws UnusableLegacyRow as translateRow does.
 */
export function importEncoder(p: Pick<LegacyImportParams, 'projectId' | 'dataset' | 'source'>, importedAtMs: number): (row: LegacyRow) => EncodedImportRow {
  const project = tsvField(p.projectId);
  const dataset = tsvField(p.dataset);
  // Each line is one join of its fields (a flat string at once, not a rope of pieces copied again
  // at the insert). After the device: no session or profile, a track named by the source.
  const kind = `\t\ttrack\t${tsvField(p.source.name)}`;
  const imported = `${importedAtMs}\t${importedAtMs}`;
  // No ref_id, ip or place; no coordinates (NULL).
  const tail = '\t\t\t\t\t\t\\N\t\\N\n';
  const keys = new Map<string, string>();
  return (row) => {
    const { legacyId, createdAtMs, deviceId, id } = legacyIdentity(p, row);
    const { payload, properties } = legacyColumnsJson(row, p.source, keys);
    return {
      id,
      created_at_ms: createdAtMs,
      event: [id, project, tsvField(deviceId), kind, createdAtMs, imported, tsvField(properties), tail].join('\t'),
      map: [dataset, tsvField(legacyId), id, project, `${createdAtMs}\n`].join('\t'),
      payload: [id, project, createdAtMs, importedAtMs, `${tsvField(payload)}\n`].join('\t'),
    };
  };
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
    ch.insertTabSeparated('legacy_id_map', IMPORT_MAP_COLUMNS, lines(rows, (r) => r.map)),
    ch.insertTabSeparated(
      'event_payloads',
      IMPORT_PAYLOAD_COLUMNS,
      lines(
        havePayloads.size ? fresh.filter((r) => !havePayloads.has(r.id)) : fresh,
        (r) => r.payload,
      ),
    ),
  ]);
  for (const s of settled) if (s.status === 'rejected') throw s.reason;
  await ch.insertTabSeparated(
    'events',
    IMPORT_EVENT_COLUMNS,
    lines(fresh, (r) => r.event),
  );
  return fresh.length;
}

/** One table's lines, as one text ('' for none). */
function lines(rows: readonly EncodedImportRow[], line: (r: EncodedImportRow) => string): string {
  return rows.map(line).join('');
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
