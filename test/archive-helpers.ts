// Helpers for the archive job tests: payloads of old months written straight into ClickHouse
// (ingestion refuses events older than 5 days), archive jobs started and awaited, R2 and the
// manifest read back.
import { env } from 'cloudflare:test';
import { expect } from 'vitest';
import type { ArchiveParams } from '../src/archive/archive-job';
import { decodeChunk, type ArchiveRow } from '../src/archive/chunk';
import { manifestStore, toChunkManifest, type ManifestRow } from '../src/archive/manifest';
import { monthBoundsMs } from '../src/archive/month';
import { readObject } from '../src/archive/r2';
import { dateTimeBounds } from '../src/clickhouse/time';
import { startJob } from '../src/jobs/actions';
import type { JobView } from '../src/jobs/store';
import { hash128, uuidv7At } from '../src/lib/ids';
import { admin, waitJob } from './backfill-helpers';
import { ch, NO_REF_OR_GEO } from './helpers';

/**
 * A payload text that JSON.stringify(JSON.parse(...)) would not give back (spaces, `1.50`, an
 * escaped slash, a `\u` escape, non-ASCII): only a byte-for-byte archive keeps it.
 */
export const oddPayload = (n: number, extra = '') => `{ "type":"track", "payload": {"name":"p${n}", "properties":{"v":1.50, "path":"a\\/b", "e":"\\u00e9é 😀", "n":${n}${extra}}} }`;

/** Rows for `count` events from `startMs`, `stepMs` apart, spread over three devices. */
export function makeRows(tag: string, count: number, startMs: number, stepMs = 1000): ArchiveRow[] {
  return Array.from({ length: count }, (_, i) => {
    const createdAtMs = startMs + i * stepMs;
    return { id: uuidv7At(createdAtMs, hash128(`${tag}:${i}`)), deviceId: `dev-${i % 3}`, createdAtMs, receivedAtMs: createdAtMs + 5000, payload: oddPayload(i) };
  });
}

/**
 * Writes the rows' payloads (into `payloadTable`: event_payloads, or where a partition drop parks
 * them) and, unless `withEvents` is false, their events (so deviceId resolves).
 */
export async function insertRows(projectId: string, rows: readonly ArchiveRow[], withEvents = true, payloadTable: 'event_payloads' | 'event_payloads_parked' = 'event_payloads'): Promise<void> {
  await ch().insert(
    payloadTable,
    rows.map((r) => ({ id: r.id, project_id: projectId, created_at_ms: r.createdAtMs, received_at_ms: r.receivedAtMs, payload: r.payload })),
  );
  if (!withEvents) return;
  await ch().insert(
    'events',
    rows.map((r) => ({
      id: r.id,
      project_id: projectId,
      device_id: r.deviceId,
      session_id: '',
      profile_id: '',
      type: 'track',
      name: 'archived',
      created_at_ms: r.createdAtMs,
      received_at_ms: r.receivedAtMs,
      synced_at_ms: r.receivedAtMs,
      properties: '{}',
      ...NO_REF_OR_GEO,
    })),
  );
}

/** id → payload text of a project's payloads in ClickHouse within a month (all months when left out). */
export async function payloadsInClickHouse(projectId: string, month?: string): Promise<Map<string, string>> {
  const { startMs, endMs } = month ? monthBoundsMs(month) : { startMs: 0, endMs: 2 ** 47 };
  const rows = await ch().query<{ id: string; payload: string }>(
    `SELECT toString(id) AS id, payload FROM event_payloads
      WHERE project_id = {p:String} AND created_at_ms >= {s:Int64} AND created_at_ms < {e:Int64}
        AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
      LIMIT 1 BY id`,
    { p: projectId, s: startMs, e: endMs, ...dateTimeBounds(startMs, endMs) },
  );
  return new Map(rows.map((r) => [r.id, r.payload]));
}

export const chunksOf = (projectId: string, month: string): Promise<ManifestRow[]> => manifestStore(env.DB).list(projectId, month);

/** Every object key under a project's month prefix (or the project's whole prefix). */
export async function objectKeys(projectId: string, month?: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await env.ARCHIVE.list({ prefix: `archives/${projectId}/${month ? `${month}/` : ''}`, ...(cursor ? { cursor } : {}) });
    keys.push(...page.objects.map((o) => o.key));
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  return keys.sort();
}

/** The rows of a recorded chunk, proved against its manifest row. */
export async function decodeRecorded(row: ManifestRow): Promise<ArchiveRow[]> {
  const body = await readObject(env.ARCHIVE, row.key);
  expect(body, `object ${row.key}`).not.toBeNull();
  return decodeChunk(body!, { ...toChunkManifest(row), key: row.key });
}

/**
 * The invariants a month must satisfy whatever happened before: R2 objects are exactly the
 * manifest's keys, and every chunk is verified, cleared and decodes. Returns the archived rows by id.
 */
export async function expectConverged(projectId: string, month: string): Promise<Map<string, ArchiveRow>> {
  const chunks = await chunksOf(projectId, month);
  expect(await objectKeys(projectId, month)).toEqual(chunks.map((c) => c.key).sort());
  const archived = new Map<string, ArchiveRow>();
  for (const c of chunks) {
    expect(c.verifiedAt, `${c.key} verified`).not.toBeNull();
    expect(c.clearedAt, `${c.key} cleared`).not.toBeNull();
    for (const r of await decodeRecorded(c)) {
      expect(archived.has(r.id), `event ${r.id} in two chunks`).toBe(false);
      archived.set(r.id, r);
    }
  }
  const left = await payloadsInClickHouse(projectId, month);
  for (const id of left.keys()) expect(archived.has(id), `payload ${id} left in ClickHouse although a verified chunk holds it`).toBe(false);
  return archived;
}

const finished = (j: JobView) => j.state === 'succeeded' || j.state === 'failed' || j.state === 'cancelled';

export async function postArchive(body: unknown): Promise<{ status: number; body: any }> {
  return admin('POST', '/admin/archives', body);
}

/** Starts an archive through the admin route and waits for it to end. */
export async function archiveMonth(projectId: string, month: string, extra: Record<string, unknown> = {}): Promise<JobView> {
  const r = await postArchive({ projectId, month, ...extra });
  if (r.status !== 202) throw new Error(`archive: ${r.status} ${JSON.stringify(r.body)}`);
  expect(r.body).toEqual({ id: expect.any(String), state: 'enqueued' });
  return waitJob(r.body.id, finished, 90_000);
}

/** Starts an archive job directly (the crash seam is not accepted by the route) and waits for it to end. */
export async function runArchiveJob(params: ArchiveParams): Promise<JobView> {
  const job = await startJob(env, 'archive', params);
  return waitJob(job.id, finished, 90_000);
}

export async function listArchives(query = ''): Promise<{ status: number; body: any }> {
  return admin('GET', `/admin/archives${query}`);
}
