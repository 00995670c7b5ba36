// Archived months built by hand for the lazy-read and restore tests: events and payloads written
// straight into ClickHouse for an old month, cut into chunks with the chunk codec, put into R2
// create-only, recorded and verified in the manifest, then cleared from ClickHouse — the state an
// archive run leaves, without depending on the archive job itself.
import { env } from 'cloudflare:test';
import { encodeChunk, planChunks, type ArchiveRow, type EncodedArchiveChunk } from '../src/archive/chunk';
import { manifestStore, type ManifestRow } from '../src/archive/manifest';
import { monthBoundsMs } from '../src/archive/month';
import { putChunkCreateOnly } from '../src/archive/r2';
import { dateTimeBounds } from '../src/clickhouse/time';
import { deleteRows } from '../src/clickhouse/mutations';
import { hash128, uuidv7At } from '../src/lib/ids';
import type { EventRow } from '../src/pipeline/messages';
import { ch, NO_REF_OR_GEO } from './helpers';

/**
 * Payload texts that a parse-and-reserialise would change (spacing, number forms, escapes, key
 * order, non-ASCII): surviving them proves a payload comes back byte for byte, not merely equal.
 */
const PAYLOAD_SHAPES: Array<(i: number) => string> = [
  (i) => `{"type":"track","payload":{"name":"ping","properties":{"n":${i}}}}`,
  (i) => `{ "type" : "track", "payload" : { "name" : "spaced", "properties" : { "n" : ${i}.0, "big" : 1e21 } } }`,
  (i) => `{"type":"track","payload":{"name":"esc\\u00e9\\n\\"q\\"","properties":{"n":${i},"path":"a\\/b"}}}`,
  (i) => `{"zeta":1,"alpha":2,"type":"track","payload":{"name":"κίνηση 🚗","properties":{"n":${i},"unicode":"日本"}}}`,
  (i) => `{"type":"track","payload":{"name":"pos","properties":{"lat":52.520008,"lon":13.404954,"speed":0.10,"n":${i}}}}`,
];

export interface FixtureEvent extends ArchiveRow {
  name: string;
}

/** `count` events of `month` for `devices`, spread over the month (in chunk order: time, then id). */
export function monthEvents(
  projectId: string,
  month: string,
  count: number,
  opts: { devices?: string[]; seed?: string; offsetMs?: number; spreadMs?: number } = {},
): FixtureEvent[] {
  const devices = opts.devices ?? ['dev-a', 'dev-b'];
  const { startMs, endMs } = monthBoundsMs(month);
  const first = startMs + 500 + (opts.offsetMs ?? 0);
  const step = Math.floor((opts.spreadMs ?? endMs - first - 500) / Math.max(1, count));
  const rows: FixtureEvent[] = [];
  for (let i = 0; i < count; i++) {
    const createdAtMs = first + i * step;
    const deviceId = devices[i % devices.length]!;
    const id = uuidv7At(createdAtMs, hash128(`${projectId}\u0000${deviceId}\u0000${opts.seed ?? ''}${i}`));
    rows.push({ id, deviceId, createdAtMs, receivedAtMs: createdAtMs + 1234, payload: PAYLOAD_SHAPES[i % PAYLOAD_SHAPES.length]!(i), name: `fixture_${i}` });
  }
  return rows.sort((a, b) => a.createdAtMs - b.createdAtMs || (a.id < b.id ? -1 : 1));
}

function eventRow(projectId: string, e: FixtureEvent): EventRow {
  return {
    id: e.id,
    project_id: projectId,
    device_id: e.deviceId,
    session_id: '',
    profile_id: '',
    type: 'track',
    name: e.name,
    created_at_ms: e.createdAtMs,
    received_at_ms: e.receivedAtMs,
    synced_at_ms: e.receivedAtMs,
    properties: '{}',
    ...NO_REF_OR_GEO,
  };
}

/** Writes the events and their raw payloads into ClickHouse, as the ingest writer would. */
export async function writeEvents(projectId: string, rows: readonly FixtureEvent[], { payloads = true } = {}): Promise<void> {
  if (payloads) {
    await ch().insert(
      'event_payloads',
      rows.map((e) => ({ id: e.id, project_id: projectId, created_at_ms: e.createdAtMs, received_at_ms: e.receivedAtMs, payload: e.payload })),
    );
  }
  await ch().insert(
    'events',
    rows.map((e) => eventRow(projectId, e)),
  );
}

export interface ArchivedMonth {
  chunks: EncodedArchiveChunk[];
  manifest: ManifestRow[];
}

/**
 * Archives `rows` (all of one month, already in ClickHouse) as an archive run would: chunks of at
 * most `chunkRows` rows, uploaded create-only, recorded, verified, and the month's payloads of
 * the project cleared from ClickHouse.
 */
export async function archiveMonth(projectId: string, month: string, rows: readonly FixtureEvent[], { chunkRows = 50_000 } = {}): Promise<ArchivedMonth> {
  const store = manifestStore(env.DB);
  const jobId = `fixture-${crypto.randomUUID()}`;
  const chunks: EncodedArchiveChunk[] = [];
  const plan = planChunks(
    rows.map(({ name: _name, ...r }) => r),
    { nextNumber: await store.nextNumber(projectId, month), maxRows: chunkRows },
  );
  for (const planned of plan) {
    const encoded = await encodeChunk({ projectId, ...planned });
    if ((await putChunkCreateOnly(env.ARCHIVE, encoded)) !== 'created') throw new Error(`fixture: ${encoded.manifest.key} already exists`);
    const now = Date.now();
    await store.insert(encoded.manifest, jobId, now);
    await store.markVerified(projectId, month, planned.number, now);
    chunks.push(encoded);
  }
  const { startMs, endMs } = monthBoundsMs(month);
  await deleteRows(
    ch(),
    'event_payloads',
    'project_id = {p:String} AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64}) AND created_at_ms >= {from:Int64} AND created_at_ms < {to:Int64}',
    { p: projectId, ...dateTimeBounds(startMs, endMs), from: startMs, to: endMs },
  );
  for (const c of chunks) await store.markCleared(projectId, month, c.manifest.number, Date.now());
  return { chunks, manifest: await store.list(projectId, month) };
}

/** The project's payload rows of a month in ClickHouse: count, distinct ids, and each text by id. */
export async function payloadsInClickHouse(projectId: string, month: string): Promise<{ rows: number; ids: number; byId: Map<string, string> }> {
  const { startMs, endMs } = monthBoundsMs(month);
  const rows = await ch().query<{ id: string; payload: string }>(
    `SELECT toString(id) AS id, payload FROM event_payloads
      WHERE project_id = {p:String} AND created_at_ms >= {from:Int64} AND created_at_ms < {to:Int64}`,
    { p: projectId, from: startMs, to: endMs },
  );
  const byId = new Map(rows.map((r) => [r.id, r.payload]));
  return { rows: rows.length, ids: byId.size, byId };
}

/** Replaces the object at `key` with the same bytes, one of them flipped (same size: only the checksum tells). */
export async function corruptObject(key: string, at = 40): Promise<void> {
  const obj = await env.ARCHIVE.get(key);
  if (!obj) throw new Error(`fixture: no object at ${key}`);
  const bytes = new Uint8Array(await obj.arrayBuffer());
  bytes[Math.min(at, bytes.length - 1)]! ^= 0xff;
  await env.ARCHIVE.put(key, bytes);
}

/**
 * Runs `fn` with background merges of `table` stopped, so a duplicate row a bug would write stays
 * visible to count() instead of being collapsed by a ReplacingMergeTree merge before it is seen.
 */
export async function withMergesStopped<T>(table: 'event_payloads' | 'events', fn: () => Promise<T>): Promise<T> {
  await ch().command(`SYSTEM STOP MERGES ${table}`);
  try {
    return await fn();
  } finally {
    await ch().command(`SYSTEM START MERGES ${table}`);
  }
}
