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
 * A step's imported rows as they are written: their ids and times (for the existence checks), and
 * each table's TabSeparated text, one line per row in the rows' order (TabSeparated escapes line
 * feeds, so line i is row i).
 */
export interface EncodedRows {
  ids: string[];
  createdAtMs: number[];
  events: string;
  maps: string;
  payloads: string;
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
 * Rows the encoder joins into one piece of text per table at a time: what a step keeps until its
 * insert is a few flat strings per table, not three strings per row that would outlive a young
 * collection or two and be copied into the old generation.
 */
const PIECE_ROWS = 100;

/**
 * The encoder of one step's rows, imported at `importedAtMs`: each row straight to its three
 * TabSeparated lines, the same rows as translateRow's (test/legacy-rows.test.ts holds them equal).
 * TabSeparated rather than JSONEachRow: no field names, and the properties and payload JSON only
 * escaped where they hold a backslash, never quoted again; both cheaper to make here and for
 * ClickHouse to read. `add` throws UnusableLegacyRow as translateRow does, and adds nothing then.
 */
export class ImportEncoder {
  private readonly ids: string[] = [];
  private readonly createdAtMs: number[] = [];
  private readonly lines = { events: [] as string[], maps: [] as string[], payloads: [] as string[] };
  private readonly pieces = { events: [] as string[], maps: [] as string[], payloads: [] as string[] };
  private readonly project: string;
  private readonly dataset: string;
  private readonly kind: string;
  private readonly imported: string;
  private readonly keys = new Map<string, string>();

  constructor(
    private readonly p: Pick<LegacyImportParams, 'projectId' | 'dataset' | 'source'>,
    private readonly importedAtMs: number,
  ) {
    this.project = tsvField(p.projectId);
    this.dataset = tsvField(p.dataset);
    // After the device: no session or profile, a track named by the source.
    this.kind = `\t\ttrack\t${tsvField(p.source.name)}`;
    this.imported = `${importedAtMs}\t${importedAtMs}`;
  }

  get length(): number {
    return this.ids.length;
  }

  add(row: LegacyRow): void {
    const { legacyId, createdAtMs, deviceId, id } = legacyIdentity(this.p, row);
    const { payload, properties } = legacyColumnsJson(row, this.p.source, this.keys);
    const { project } = this;
    this.ids.push(id);
    this.createdAtMs.push(createdAtMs);
    // No ref_id, ip or place; no coordinates (NULL).
    this.lines.events.push([id, project, tsvField(deviceId), this.kind, createdAtMs, this.imported, tsvField(properties), '\t\t\t\t\t\t\\N\t\\N\n'].join('\t'));
    this.lines.maps.push([this.dataset, tsvField(legacyId), id, project, `${createdAtMs}\n`].join('\t'));
    this.lines.payloads.push([id, project, createdAtMs, this.importedAtMs, `${tsvField(payload)}\n`].join('\t'));
    if (this.lines.events.length === PIECE_ROWS) this.join();
  }

  /** The rows added, each table's lines as one text; the encoder starts empty again. */
  finish(): EncodedRows {
    this.join();
    const out = { ids: this.ids.splice(0), createdAtMs: this.createdAtMs.splice(0), events: this.pieces.events.join(''), maps: this.pieces.maps.join(''), payloads: this.pieces.payloads.join('') };
    this.pieces.events = [];
    this.pieces.maps = [];
    this.pieces.payloads = [];
    return out;
  }

  private join() {
    for (const t of ['events', 'maps', 'payloads'] as const) {
      if (this.lines[t].length === 0) continue;
      this.pieces[t].push(this.lines[t].join(''));
      this.lines[t].length = 0;
    }
  }
}

/** The lines of `text` (each ending with a line feed) whose index `keep` accepts. */
function keepLines(text: string, keep: (i: number) => boolean): string {
  const lines = text.split('\n');
  lines.pop();
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
  const isFresh = (i: number) => !have.has(ids[i]!);
  let payloads = rows.payloads;
  let events = rows.events;
  let fresh = ids.length;
  if (have.size) {
    events = keepLines(events, isFresh);
    payloads = keepLines(payloads, isFresh);
    fresh = ids.filter((_, i) => isFresh(i)).length;
  }
  if (verify && fresh > 0) {
    const freshIds = ids.filter((_, i) => isFresh(i));
    const havePayloads = await existingIds(ch, 'event_payloads', projectId, freshIds, createdAtMs.filter((_, i) => isFresh(i)));
    if (havePayloads.size) payloads = keepLines(payloads, (i) => !havePayloads.has(freshIds[i]!));
  }
  // Both settle before a failure is reported: a retry's id check must not race an insert in flight.
  const settled = await Promise.allSettled([ch.insertTabSeparated('legacy_id_map', IMPORT_MAP_COLUMNS, rows.maps), ch.insertTabSeparated('event_payloads', IMPORT_PAYLOAD_COLUMNS, payloads)]);
  for (const s of settled) if (s.status === 'rejected') throw s.reason;
  await ch.insertTabSeparated('events', IMPORT_EVENT_COLUMNS, events);
  return fresh;
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
