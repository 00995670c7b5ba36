// Lazy reads of archived payloads: the chunks whose time range holds an event, its row found in one
// chunk without parsing the others, and the Cache API key under which a chunk is kept.
import { ArchiveChunkError, chunkKey, isSha256Hex, parseChunkLine, type ArchiveChunkManifest, type ArchiveRow } from './chunk';

/**
 * The default origin of cache keys. It is fixed, not the request's host, so that reads through any
 * hostname and the erasure purge (which has no request) compute the same key for a chunk.
 * Cloudflare advises keys on a hostname of the Worker's own zone: a deployment may pass one as
 * `origin`, the same everywhere.
 */
export const ARCHIVE_CACHE_ORIGIN = 'https://archive-cache.driftline.internal';

/**
 * How long a cached chunk may live. `cache.delete` reaches only the data center it runs in, so after
 * an erasure rewrites a chunk, copies cached elsewhere (no longer reachable: the manifest names the
 * new SHA-256) expire within this bound.
 */
export const ARCHIVE_CACHE_MAX_AGE_SEC = 3600;

export type ChunkCacheRef = Pick<ArchiveChunkManifest, 'projectId' | 'month' | 'number' | 'sha256Hex'>;

/**
 * The Cache API key of a chunk, from its manifest row alone (never from the request or the event):
 * the object's SHA-256 is part of it, so a rewritten chunk is a new key and a stale entry is never served.
 */
export function chunkCacheUrl(chunk: ChunkCacheRef, origin: string = ARCHIVE_CACHE_ORIGIN): string {
  if (!isSha256Hex(chunk.sha256Hex)) throw new RangeError(`not a SHA-256 in lowercase hex: ${JSON.stringify(chunk.sha256Hex)}`);
  const base = new URL(origin);
  if (base.protocol !== 'https:' && base.protocol !== 'http:') throw new RangeError(`a cache key needs an http(s) origin, got ${origin}`);
  // chunkKey checks the project id, month and number: each is a plain path segment.
  return `${base.origin}/${chunkKey(chunk.projectId, chunk.month, chunk.number)}/${chunk.sha256Hex}`;
}

/**
 * The chunks (manifest rows) whose [first, last] event time holds `createdAtMs`, by number. Chunks
 * of one run never overlap (ties at a boundary aside); a later chunk of late data may, so more
 * than one can come back, never a whole month.
 */
export function chunksHoldingTime<T extends Pick<ArchiveChunkManifest, 'number' | 'firstCreatedAtMs' | 'lastCreatedAtMs'>>(
  chunks: readonly T[],
  createdAtMs: number,
): T[] {
  return chunks.filter((c) => c.firstCreatedAtMs <= createdAtMs && createdAtMs <= c.lastCreatedAtMs).sort((a, b) => a.number - b.number);
}

/**
 * One event's row in a chunk's JSON Lines text (as inflateChunk returns it), or null: a single
 * search for the line that starts with its id, then only that line is parsed.
 */
export function findEventInChunkText(chunkText: string, eventId: string): ArchiveRow | null {
  const prefix = `{"id":${JSON.stringify(eventId.toLowerCase())},`;
  let start: number;
  if (chunkText.startsWith(prefix)) start = 0;
  else {
    const at = chunkText.indexOf('\n' + prefix);
    if (at < 0) return null;
    start = at + 1;
  }
  const end = chunkText.indexOf('\n', start);
  const row = parseChunkLine(chunkText.slice(start, end < 0 ? chunkText.length : end));
  if (!row) throw new ArchiveChunkError('malformed_line', `the chunk line of event ${eventId} is not an archived event`, { id: eventId });
  return row;
}

/**
 * One event's row among a chunk's decoded rows (ordered by createdAtMs, then id), or null. With the
 * event's `createdAtMs` (the events table has it) a binary search; without it, a scan that stops at the row.
 */
export function findEventInRows(rows: readonly ArchiveRow[], eventId: string, createdAtMs?: number): ArchiveRow | null {
  const id = eventId.toLowerCase();
  if (createdAtMs === undefined) return rows.find((r) => r.id === id) ?? null;
  let lo = 0;
  let hi = rows.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const r = rows[mid]!;
    if (r.createdAtMs < createdAtMs || (r.createdAtMs === createdAtMs && r.id < id)) lo = mid + 1;
    else hi = mid;
  }
  const hit = rows[lo];
  return hit && hit.id === id && hit.createdAtMs === createdAtMs ? hit : null;
}
