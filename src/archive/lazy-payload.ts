// One event's raw payload wherever it lives now: `event_payloads` in ClickHouse, else the one
// archive chunk whose time range holds the event, read through the Cache API (R2 only on a miss).
import type { ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import { uuidv7Time } from '../lib/ids';
import { ArchiveChunkError, inflateChunk } from './chunk';
import { ARCHIVE_CACHE_MAX_AGE_SEC, chunkCacheUrl, findEventInChunkText } from './lazy-read';
import { toChunkManifest, type ManifestStore, type ManifestRow } from './manifest';
import { monthOfMs } from './month';

/** A chunk the manifest names cannot be read from R2 (no object at its key, or R2 failed): retryable. */
export class ArchiveUnavailable extends Error {
  override name = 'ArchiveUnavailable';
  constructor(
    readonly key: string,
    detail: string,
  ) {
    super(`archive chunk ${key}: ${detail}`);
  }
}

/** A chunk object failed its checks (SHA-256, gzip, UTF-8, a line): the archive is damaged, not the request. */
export class ArchiveCorrupt extends Error {
  override name = 'ArchiveCorrupt';
  constructor(
    readonly key: string,
    readonly reason: ArchiveChunkError,
  ) {
    super(`archive chunk ${key} is corrupt: ${reason.message}`, { cause: reason });
  }
}

/** What a lookup cost the archive: R2 bytes read, and whether its chunks came from the cache. */
export interface ArchiveReadStats {
  /** Bytes of chunk objects read from R2 (0 when every chunk consulted was cached). */
  bytesRead: number;
  /** `none`: no chunk consulted; `hit`: every chunk consulted was cached; `miss`: at least one came from R2. */
  cache: 'none' | 'hit' | 'miss';
  /** Chunks searched for the event (cached or not). */
  chunksRead: number;
}

export type PayloadLookup =
  | { found: true; id: string; source: 'clickhouse' | 'archive'; /** The payload's JSON text exactly as stored. */ payloadText: string; stats: ArchiveReadStats }
  | { found: false; reason: 'event_not_found' | 'payload_not_found'; stats: ArchiveReadStats };

export interface PayloadStores {
  ch: ClickHouse;
  manifest: Pick<ManifestStore, 'holdingTime'>;
  bucket: R2Bucket;
  /** `caches.default` in a Worker; null to read R2 every time. */
  cache: Cache | null;
}

/** The largest time a UUIDv7 carries: ids of events outside [1970, this] carry a clamped time. */
const MAX_UUIDV7_MS = 2 ** 48 - 1;
/** The last instant ClickHouse's `DateTime` holds (2106-02-07): no event is stored past it. */
const MAX_STORED_MS = (2 ** 32 - 1) * 1000;

/**
 * The event time an id carries. Every event id the gateway writes is a UUIDv7 whose time part is
 * the event's `createdAt` (ingest and legacy import alike, see src/lib/ids.ts uuidv7At), so it
 * bounds the lookup to one partition and one instant. Null when the id is no UUIDv7 (rows written
 * by other means), its time was clamped (an event before 1970) or lies past 2106, where no stored
 * event can be: the lookup then goes by id alone.
 */
export function eventTimeOfId(id: string): number | null {
  if (id[14] !== '7') return null;
  const t = uuidv7Time(id);
  // Past what ClickHouse stores (an id made up, not one the gateway wrote): looked up by id alone.
  return t > 0 && t < MAX_UUIDV7_MS && t <= MAX_STORED_MS ? t : null;
}

/** The WHERE fragment (and its parameters) that pins `created_at_ms` to the id's time, or nothing. */
function atTime(timeMs: number | null): { sql: string; params: Record<string, number> } {
  if (timeMs === null) return { sql: '', params: {} };
  return {
    sql: ' AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64}) AND created_at_ms = {t:Int64}',
    params: { ...dateTimeBounds(timeMs, timeMs), t: timeMs },
  };
}

async function payloadInClickHouse(ch: ClickHouse, projectId: string, id: string, timeMs: number | null): Promise<string | null> {
  const at = atTime(timeMs);
  const rows = await ch.query<{ payload: string }>(`SELECT payload FROM event_payloads WHERE project_id = {p:String} AND id = {id:UUID}${at.sql} LIMIT 1`, {
    p: projectId,
    id,
    ...at.params,
  });
  return rows[0]?.payload ?? null;
}

/** The event's time in `events`, or null when the project has no such event. */
async function eventTime(ch: ClickHouse, projectId: string, id: string, timeMs: number | null): Promise<number | null> {
  const at = atTime(timeMs);
  const rows = await ch.query<{ t: number | string }>(`SELECT created_at_ms AS t FROM events WHERE project_id = {p:String} AND id = {id:UUID}${at.sql} LIMIT 1`, {
    p: projectId,
    id,
    ...at.params,
  });
  return rows[0] ? Number(rows[0].t) : null;
}

async function cached(cache: Cache | null, url: string): Promise<string | null> {
  if (!cache) return null;
  try {
    const hit = await cache.match(url);
    return hit ? new TextDecoder().decode(await hit.arrayBuffer()) : null;
  } catch (err) {
    // The cache is an optimisation: a failing one costs an R2 read, never the answer.
    console.error(JSON.stringify({ msg: 'archive cache read failed', url, error: String(err) }));
    return null;
  }
}

async function remember(cache: Cache | null, url: string, text: string): Promise<void> {
  if (!cache) return;
  try {
    await cache.put(
      url,
      new Response(text, { headers: { 'content-type': 'application/x-ndjson; charset=utf-8', 'cache-control': `max-age=${ARCHIVE_CACHE_MAX_AGE_SEC}` } }),
    );
  } catch (err) {
    console.error(JSON.stringify({ msg: 'archive cache write failed', url, error: String(err) }));
  }
}

/** The chunk's JSON Lines text from R2, proven against its manifest row's SHA-256; null when no object is there. */
async function fetchChunkText(bucket: R2Bucket, row: ManifestRow): Promise<{ text: string; bytes: number } | null> {
  let body: ArrayBuffer;
  try {
    const obj = await bucket.get(row.key);
    if (!obj) return null;
    body = await obj.arrayBuffer();
  } catch (err) {
    throw new ArchiveUnavailable(row.key, `R2 read failed (${String(err)})`);
  }
  try {
    return { text: await inflateChunk(body, { sha256Hex: row.sha256, key: row.key }), bytes: body.byteLength };
  } catch (err) {
    if (err instanceof ArchiveChunkError) throw new ArchiveCorrupt(row.key, err);
    throw err;
  }
}

function findIn(text: string, row: ManifestRow, id: string): string | null {
  try {
    return findEventInChunkText(text, id)?.payload ?? null;
  } catch (err) {
    if (err instanceof ArchiveChunkError) throw new ArchiveCorrupt(row.key, err);
    throw err;
  }
}

type ArchiveSearch = { payloadText: string | null; missing: ManifestRow[] };

/**
 * Searches the candidate chunks: cached ones first (free), then the others from R2 one at a time
 * until the event turns up, so a read fetches at most one chunk unless late-data chunks overlap.
 */
async function searchChunks(stores: PayloadStores, candidates: readonly ManifestRow[], id: string, stats: ArchiveReadStats): Promise<ArchiveSearch> {
  const urls = candidates.map((c) => chunkCacheUrl(toChunkManifest(c)));
  const texts = await Promise.all(urls.map((u) => cached(stores.cache, u)));
  const uncached: number[] = [];
  for (let i = 0; i < candidates.length; i++) {
    const text = texts[i];
    if (text === null || text === undefined) {
      uncached.push(i);
      continue;
    }
    stats.chunksRead += 1;
    if (stats.cache === 'none') stats.cache = 'hit';
    const payloadText = findIn(text, candidates[i]!, id);
    if (payloadText !== null) return { payloadText, missing: [] };
  }
  const missing: ManifestRow[] = [];
  for (const i of uncached) {
    const row = candidates[i]!;
    const fetched = await fetchChunkText(stores.bucket, row);
    if (!fetched) {
      missing.push(row);
      continue;
    }
    stats.bytesRead += fetched.bytes;
    stats.chunksRead += 1;
    stats.cache = 'miss';
    await remember(stores.cache, urls[i]!, fetched.text);
    const payloadText = findIn(fetched.text, row, id);
    if (payloadText !== null) return { payloadText, missing: [] };
  }
  return { payloadText: null, missing };
}

/**
 * The raw payload of event `id` (a lowercase UUID) of `projectId`. Never another project's: every
 * query and the manifest are filtered by project, and chunks live under the project's keys.
 * Archived payloads are searched only in the verified chunks whose time range holds the event
 * (never a scan of a month). Throws ArchiveUnavailable / ArchiveCorrupt when such a chunk cannot be
 * read or is damaged; ClickHouse errors pass through.
 */
export async function lookupPayload(stores: PayloadStores, projectId: string, id: string): Promise<PayloadLookup> {
  const stats: ArchiveReadStats = { bytesRead: 0, cache: 'none', chunksRead: 0 };
  const hint = eventTimeOfId(id);
  const inClickHouse = await payloadInClickHouse(stores.ch, projectId, id, hint);
  if (inClickHouse !== null) return { found: true, id, source: 'clickhouse', payloadText: inClickHouse, stats };

  // With the id's time the manifest is asked directly; the events table is read only to tell a
  // missing event from a missing payload. Without it, the events table gives the time.
  const createdAtMs = hint ?? (await eventTime(stores.ch, projectId, id, null));
  if (createdAtMs === null) return { found: false, reason: 'event_not_found', stats };

  const month = monthOfMs(createdAtMs);
  const candidates = await stores.manifest.holdingTime(projectId, month, createdAtMs);
  let search = await searchChunks(stores, candidates, id, stats);
  if (search.payloadText === null && search.missing.length) {
    // An erasure may have just rewritten the chunk (a new object, the old one deleted): ask the
    // manifest again; a chunk it still names without an object is an outage, not an absence.
    const chunkId = (c: ManifestRow) => `${c.number}:${c.sha256}`;
    const seen = new Set(candidates.map(chunkId));
    const missing = new Set(search.missing.map(chunkId));
    const now = await stores.manifest.holdingTime(projectId, month, createdAtMs);
    const again = await searchChunks(stores, now.filter((c) => !seen.has(chunkId(c))), id, stats);
    const lost = now.find((c) => missing.has(chunkId(c))) ?? again.missing[0];
    if (again.payloadText === null && lost) throw new ArchiveUnavailable(lost.key, 'the manifest names it but R2 has no object at that key');
    search = again;
  }
  if (search.payloadText !== null) return { found: true, id, source: 'archive', payloadText: search.payloadText, stats };

  const exists = hint === null || (await eventTime(stores.ch, projectId, id, hint)) !== null;
  return { found: false, reason: exists ? 'payload_not_found' : 'event_not_found', stats };
}
