// Fixtures of the erasure tests: live events through the real ingest route, old months written
// straight into ClickHouse with their payloads archived as verified, cleared chunks (built with the
// archive codec, not the archive job), and readers that prove what every store still holds.
import { env } from 'cloudflare:test';
import { decodeChunk, encodeChunk, type ArchiveRow } from '../src/archive/chunk';
import { manifestStore, type ManifestRow } from '../src/archive/manifest';
import { putChunkCreateOnly, readObject } from '../src/archive/r2';
import { hash128, uuidv7At } from '../src/lib/ids';
import { DEAD_LETTER_PREFIX, QUARANTINE_PREFIX } from '../src/pipeline/dead-letters';
import type { JobView } from '../src/jobs/store';
import { admin, getJob } from './backfill-helpers';
import { ch, postBatch, waitUntil, type TestProject, NO_REF_OR_GEO } from './helpers';

export const JUNE = Date.UTC(2025, 5, 3, 8);
export const JULY = Date.UTC(2025, 6, 9, 8);

/** An event of an old month: its `events` row and its archived line are built from this. */
export interface OldEvent {
  id: string;
  deviceId: string;
  profileId: string;
  type: 'track' | 'identify';
  name: string;
  sessionId: string;
  createdAtMs: number;
  receivedAtMs: number;
  /** Raw payload text, kept verbatim (odd spacing and non-ASCII on purpose). */
  payload: string;
}

/** `n` events of a device, a minute apart from `startMs`; `profileOf(i)` names each one's profile ('' = anonymous). */
export function oldEvents(projectId: string, deviceId: string, startMs: number, n: number, profileOf: (i: number) => string, sessionId = crypto.randomUUID()): OldEvent[] {
  return Array.from({ length: n }, (_, i) => {
    const createdAtMs = startMs + i * 60_000 + (deviceId.length % 7) * 1000;
    const profileId = profileOf(i);
    const type = profileId && i === 0 ? 'identify' : 'track';
    return {
      id: uuidv7At(createdAtMs, hash128(`${projectId}/${deviceId}/${i}`)),
      deviceId,
      profileId,
      type,
      name: type === 'identify' ? 'identify' : 'trip_point',
      sessionId,
      createdAtMs,
      receivedAtMs: createdAtMs + 1500,
      payload: `{ "type" : "${type}", "payload": {"name":"trip_point","note":"Zürich ✓ ${i}","device":"${deviceId}"${profileId ? `,"profileId":"${profileId}"` : ''}} }`,
    };
  });
}

export const toArchiveRow = (e: OldEvent): ArchiveRow => ({ id: e.id, deviceId: e.deviceId, createdAtMs: e.createdAtMs, receivedAtMs: e.receivedAtMs, payload: e.payload });
export const byTime = (a: { createdAtMs: number; id: string }, b: { createdAtMs: number; id: string }) => a.createdAtMs - b.createdAtMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/** The old events' rows in `events` (identify ones reach `profile_ops` through its view) and one session row per session. */
export async function insertOldEvents(projectId: string, events: readonly OldEvent[]): Promise<void> {
  await ch().insert(
    'events',
    events.map((e) => ({
      id: e.id,
      project_id: projectId,
      device_id: e.deviceId,
      session_id: e.sessionId,
      profile_id: e.profileId,
      type: e.type,
      name: e.name,
      created_at_ms: e.createdAtMs,
      received_at_ms: e.receivedAtMs,
      synced_at_ms: e.receivedAtMs + 10,
      properties: e.type === 'identify' ? '{"plan":"gold"}' : '{}',
      ...NO_REF_OR_GEO,
    })),
  );
  const sessions = new Map<string, OldEvent[]>();
  for (const e of events) sessions.set(e.sessionId, [...(sessions.get(e.sessionId) ?? []), e]);
  await ch().insert(
    'sessions',
    [...sessions.entries()].map(([id, evs]) => ({
      project_id: projectId,
      device_id: evs[0]!.deviceId,
      id,
      started_at_ms: Math.min(...evs.map((e) => e.createdAtMs)),
      ended_at_ms: Math.max(...evs.map((e) => e.createdAtMs)),
      event_count: evs.length,
      ended: 1,
      merged_into: '',
      version: 1,
      updated_at_ms: evs[0]!.receivedAtMs,
    })),
  );
}

/** Each group of old events becomes one verified, cleared chunk of `month` (numbers from 1 on); their payloads are nowhere else. */
export async function archiveOldChunks(projectId: string, month: string, groups: readonly OldEvent[][], lineOf: (e: OldEvent) => ArchiveRow = toArchiveRow): Promise<ManifestRow[]> {
  const store = manifestStore(env.DB);
  const out: ManifestRow[] = [];
  for (const group of groups) {
    const number = await store.nextNumber(projectId, month);
    const chunk = await encodeChunk({ projectId, month, number, rows: [...group].sort(byTime).map(lineOf) });
    if ((await putChunkCreateOnly(env.ARCHIVE, chunk)) !== 'created') throw new Error(`fixture chunk ${chunk.manifest.key} exists`);
    const now = Date.now();
    await store.insert(chunk.manifest, 'fixture', now);
    await store.markVerified(projectId, month, number, now);
    await store.markCleared(projectId, month, number, now);
    out.push((await store.get(projectId, month, number))!);
  }
  return out;
}

/** Every object under the project's archive prefix, each decoded against its manifest row (throws when one has none or fails). */
export async function readArchive(projectId: string): Promise<Array<{ row: ManifestRow; rows: ArchiveRow[] }>> {
  const store = manifestStore(env.DB);
  const manifest = new Map((await store.list(projectId)).map((r) => [r.key, r]));
  const out: Array<{ row: ManifestRow; rows: ArchiveRow[] }> = [];
  let cursor: string | undefined;
  const keys: string[] = [];
  do {
    const page = await env.ARCHIVE.list({ prefix: `archives/${projectId}/`, ...(cursor ? { cursor } : {}) });
    keys.push(...page.objects.map((o) => o.key));
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  for (const key of keys) {
    const row = manifest.get(key);
    if (!row) throw new Error(`object ${key} has no manifest row`);
    const body = await readObject(env.ARCHIVE, key);
    out.push({ row, rows: await decodeChunk(body!, { sha256Hex: row.sha256, idsChecksumHex: row.idsChecksum, rowCount: row.rowCount, month: row.month, key }) });
  }
  for (const key of manifest.keys()) if (!keys.includes(key)) throw new Error(`manifest row ${key} has no object`);
  return out;
}

/** A live event of a device through POST /track/batch (`profileId` on it when given). */
export function liveEvent(deviceId: string, eventId: string, atMs: number, profileId?: string, type: 'track' | 'identify' = 'track') {
  const properties = { __deviceId: deviceId, __eventId: eventId, __timestamp: atMs, speed: 42 };
  if (type === 'identify') return { type, payload: { profileId: profileId!, email: `${profileId}@example.com`, properties } };
  return { type, payload: { name: 'trip_point', properties, ...(profileId ? { profileId } : {}) } };
}

export async function ingest(p: TestProject, events: unknown[]): Promise<void> {
  const res = await postBatch(p, { events });
  const body = (await res.json()) as { accepted: number; rejected: unknown[] };
  if (res.status !== 202 || body.rejected.length) throw new Error(`ingest: ${res.status} ${JSON.stringify(body)}`);
}

export interface StoreCounts {
  events: number;
  payloads: number;
  sessions: number;
  profileOps: number;
}

/** Distinct rows per table of a project matching an extra condition on `events` (device or profile). */
export async function countRows(projectId: string, eventsWhere: string, params: Record<string, string>): Promise<StoreCounts> {
  const q = async (sql: string) => Number((await ch().query<{ n: number }>(sql, { p: projectId, ...params }))[0]!.n);
  const ids = `SELECT id FROM events WHERE project_id = {p:String} AND ${eventsWhere}`;
  return {
    events: await q(`SELECT uniqExact(id) AS n FROM events WHERE project_id = {p:String} AND ${eventsWhere}`),
    payloads: await q(`SELECT uniqExact(id) AS n FROM event_payloads WHERE project_id = {p:String} AND id IN (${ids})`),
    sessions: await q(`SELECT uniqExact(id) AS n FROM sessions WHERE project_id = {p:String} AND id IN (SELECT session_id FROM events WHERE project_id = {p:String} AND ${eventsWhere})`),
    profileOps: await q(`SELECT uniqExact(id) AS n FROM profile_ops WHERE project_id = {p:String} AND id IN (${ids})`),
  };
}

export async function countTable(table: string, projectId: string, where = '1', params: Record<string, string> = {}): Promise<number> {
  return Number((await ch().query<{ n: number }>(`SELECT count() AS n FROM ${table} WHERE project_id = {p:String} AND ${where}`, { p: projectId, ...params }))[0]!.n);
}

const finished = (j: JobView) => j.state === 'succeeded' || j.state === 'failed' || j.state === 'cancelled';

export async function waitFinished(id: string, timeoutMs = 110_000): Promise<JobView> {
  return waitUntil(() => getJob(id), finished, { timeoutMs, intervalMs: 200 });
}

export async function startErasure(body: Record<string, unknown>): Promise<string> {
  const r = await admin('POST', '/admin/erasures', body);
  if (r.status !== 202) throw new Error(`erasure: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.id as string;
}

/** Deletes every parked and quarantined ingest message: a test that parks some leaves none to the next. */
export async function clearDeadLetters(): Promise<void> {
  for (const prefix of [DEAD_LETTER_PREFIX, QUARANTINE_PREFIX]) {
    const keys = (await env.ARCHIVE.list({ prefix })).objects.map((o) => o.key);
    if (keys.length) await env.ARCHIVE.delete(keys);
  }
}
