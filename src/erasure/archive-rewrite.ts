// Erasure in the archive: a chunk holding a subject's rows is replaced by a new chunk of the other
// rows (uploaded create-only, proved by reading it back, given the old chunk's cleared/restored
// state), and only then is the old one retired (cache entry, object, manifest row).
import { chunkKeyPrefix, decodeChunk, encodeChunk, idsChecksum, inflateChunk, parseChunkKey, parseChunkText, sha256Hex, type ArchiveRow } from '../archive/chunk';
import { chunkCacheUrl } from '../archive/lazy-read';
import { toChunkManifest, type ManifestRow, type ManifestStore } from '../archive/manifest';
import { putChunkCreateOnly, readObject } from '../archive/r2';
import type { CrashPoint } from './params';

/** What an erasure did to the archive. */
export interface ArchiveCounts {
  /** Chunks that held the subject's rows and were replaced by a new chunk of the others' rows. */
  chunksRewritten: number;
  /** Objects deleted: every chunk that held the subject's rows (rewritten or left empty), and orphans holding them. */
  objectsDeleted: number;
  /** The subject's rows removed from the archive. */
  rows: number;
}

export const NO_ARCHIVE_ROWS: ArchiveCounts = { chunksRewritten: 0, objectsDeleted: 0, rows: 0 };

/** Given a chunk's rows and time range, which of them are the subject's. */
export type SubjectRows = (rows: readonly ArchiveRow[], fromMs: number, toMs: number) => Promise<(row: ArchiveRow) => boolean>;

export interface ArchiveContext {
  bucket: R2Bucket;
  store: ManifestStore;
  projectId: string;
  jobId: string;
  crash: (point: CrashPoint) => void;
}

/** An old chunk to retire once its replacement (if any) is in place: recorded in the job's cursor first. */
export interface Retirement {
  month: string;
  number: number;
  /** The chunk of the remaining rows, or null when none remained. */
  replacement: number | null;
  /** The subject's rows the old chunk held. */
  rows: number;
}

/** Pure core: a chunk's rows without the subject's, in their order. */
export function withoutSubject(rows: readonly ArchiveRow[], isSubject: (row: ArchiveRow) => boolean): { kept: ArchiveRow[]; removed: number } {
  const kept = rows.filter((r) => !isSubject(r));
  return { kept, removed: rows.length - kept.length };
}

const sameRow = (a: ArchiveRow, b: ArchiveRow) =>
  a.id === b.id && a.deviceId === b.deviceId && a.createdAtMs === b.createdAtMs && a.receivedAtMs === b.receivedAtMs && a.payload === b.payload;

/** Reads a manifest row's object back and proves it holds exactly `expected`, byte for byte. */
async function proveChunk(bucket: R2Bucket, row: ManifestRow, expected: readonly ArchiveRow[]): Promise<void> {
  const body = await readObject(bucket, row.key);
  if (!body) throw new Error(`${row.key}: the new chunk's object is missing`);
  const rows = await decodeChunk(body, { sha256Hex: row.sha256, idsChecksumHex: row.idsChecksum, rowCount: row.rowCount, month: row.month, key: row.key });
  if (rows.length !== expected.length || rows.some((r, i) => !sameRow(r, expected[i]!))) {
    throw new Error(`${row.key}: the new chunk does not hold exactly the rows it replaces`);
  }
}

/** Tries at most this many numbers past an object at the next number that is not this chunk. */
const MAX_FOREIGN_OBJECTS = 5;

/** Uploads the chunk of `rows` at the month's next number (or finds it there from a cut-short attempt) and records it. */
async function uploadReplacement(ctx: ArchiveContext, month: string, rows: ArchiveRow[]): Promise<ManifestRow> {
  let number = await ctx.store.nextNumber(ctx.projectId, month);
  for (let tries = 0; ; tries++, number++) {
    const encoded = await encodeChunk({ projectId: ctx.projectId, month, number, rows });
    if ((await putChunkCreateOnly(ctx.bucket, encoded)) === 'exists') {
      // An object with no manifest row: this very chunk from an attempt cut short before it was
      // recorded (the encoding is deterministic), or something else, which is never overwritten.
      const there = await readObject(ctx.bucket, encoded.manifest.key);
      if (!there || (await sha256Hex(there)) !== encoded.manifest.sha256Hex) {
        if (tries + 1 >= MAX_FOREIGN_OBJECTS) throw new Error(`${encoded.manifest.key}: unrecorded objects occupy the next chunk numbers of ${month}`);
        continue;
      }
    }
    ctx.crash('archive.afterPut');
    await ctx.store.insert(encoded.manifest, ctx.jobId, Date.now());
    const row = await ctx.store.get(ctx.projectId, month, number);
    if (!row || row.sha256 !== encoded.manifest.sha256Hex) throw new Error(`${encoded.manifest.key}: another chunk was recorded under this number meanwhile`);
    ctx.crash('archive.afterInsert');
    return row;
  }
}

/**
 * Replaces one chunk that holds subject rows by a chunk of the others' rows. 'clean' when it holds
 * none, 'missing' when its object is gone. Safe to run again after being cut short anywhere: a
 * recorded chunk of exactly the remaining ids (same ids checksum) is the replacement, so the others'
 * rows never end up in two chunks. The old chunk itself is left to `retireChunk`.
 */
export async function rewriteChunk(ctx: ArchiveContext, old: ManifestRow, subjectRows: SubjectRows): Promise<Retirement | 'clean' | 'missing'> {
  const body = await readObject(ctx.bucket, old.key);
  if (!body) return 'missing';
  const rows = await decodeChunk(body, { sha256Hex: old.sha256, idsChecksumHex: old.idsChecksum, rowCount: old.rowCount, month: old.month, key: old.key });
  const isSubject = await subjectRows(rows, old.firstCreatedAtMs, old.lastCreatedAtMs);
  const { kept, removed } = withoutSubject(rows, isSubject);
  if (removed === 0) return 'clean';
  if (kept.length === 0) return { month: old.month, number: old.number, replacement: null, rows: removed };

  const keptChecksum = await idsChecksum(kept.map((r) => r.id));
  const siblings = await ctx.store.list(ctx.projectId, old.month);
  let replacement = siblings.find((r) => r.number !== old.number && r.idsChecksum === keptChecksum && r.rowCount === kept.length);
  replacement ??= await uploadReplacement(ctx, old.month, kept);
  // Verified before anything depends on it; then it takes over the old chunk's state.
  await proveChunk(ctx.bucket, replacement, kept);
  const now = Date.now();
  await ctx.store.markVerified(ctx.projectId, old.month, replacement.number, now);
  if (old.clearedAt !== null) await ctx.store.markCleared(ctx.projectId, old.month, replacement.number, old.clearedAt);
  if (old.restoredAt !== null) await ctx.store.markRestored(ctx.projectId, old.month, replacement.number, old.restoredAt);
  ctx.crash('archive.afterVerify');
  return { month: old.month, number: old.number, replacement: replacement.number, rows: removed };
}

/** Drops an old chunk whose rows are safe elsewhere: its cache entry, its object, then its manifest row. Idempotent. */
export async function retireChunk(ctx: ArchiveContext, month: string, number: number): Promise<void> {
  const row = await ctx.store.get(ctx.projectId, month, number);
  if (!row) return;
  // Only this data center's entry: copies cached elsewhere expire (ARCHIVE_CACHE_MAX_AGE_SEC) and
  // are never served again, since the manifest no longer names this chunk.
  await caches.default.delete(chunkCacheUrl(toChunkManifest(row)));
  await ctx.bucket.delete(row.key);
  ctx.crash('archive.afterObjectDelete');
  await ctx.store.remove(ctx.projectId, month, number);
}

/**
 * Objects under a month's prefix that the manifest does not name (an upload cut short before it was
 * recorded) are no chunk of the archive, but may still hold the subject's rows: each one that does
 * is deleted (the rows it shares with recorded chunks or ClickHouse stay there), and so is each one
 * that cannot be read, since nobody can say it holds none. Deleting an orphan loses nothing: its
 * payloads were never cleared on its account, no archive job writes beside an erasure, and the
 * caller does not come here while another erasure of the project runs. Each object is looked up in
 * the manifest once more just before it is deleted.
 */
export async function deleteOrphansHoldingSubject(ctx: ArchiveContext, month: string, subjectRows: SubjectRows): Promise<ArchiveCounts> {
  const recorded = new Set((await ctx.store.list(ctx.projectId, month)).map((r) => r.key));
  const counts = { ...NO_ARCHIVE_ROWS };
  let cursor: string | undefined;
  do {
    const page = await ctx.bucket.list({ prefix: chunkKeyPrefix(ctx.projectId, month), ...(cursor ? { cursor } : {}) });
    for (const obj of page.objects) {
      const parsed = parseChunkKey(obj.key);
      if (recorded.has(obj.key) || !parsed) continue;
      const stillUnrecorded = async () => (await ctx.store.get(ctx.projectId, month, parsed.number))?.key !== obj.key;
      const body = await readObject(ctx.bucket, obj.key);
      if (!body) continue;
      let rows: ArchiveRow[];
      try {
        rows = parseChunkText(await inflateChunk(body, { sha256Hex: await sha256Hex(body), key: obj.key }), obj.key);
      } catch (err) {
        if (!(await stillUnrecorded())) continue;
        console.error(JSON.stringify({ msg: 'unreadable object under an archive prefix deleted: it may hold the subject', key: obj.key, error: String(err) }));
        await ctx.bucket.delete(obj.key);
        counts.objectsDeleted += 1;
        continue;
      }
      if (!rows.length) continue;
      const isSubject = await subjectRows(rows, Math.min(...rows.map((r) => r.createdAtMs)), Math.max(...rows.map((r) => r.createdAtMs)));
      const held = rows.filter(isSubject).length;
      if (!held || !(await stillUnrecorded())) continue;
      await ctx.bucket.delete(obj.key);
      counts.objectsDeleted += 1;
      counts.rows += held;
    }
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  return counts;
}
