// The `restore` job: a (project, month)'s archived payloads written back to ClickHouse, one chunk
// per job chunk, each object proven against its manifest row first. The chunks stay in R2.
import { z } from 'zod';
import { clickhouse, type ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import { getConfig } from '../config';
import type { Env } from '../env';
import { PermanentChunkError, type ChunkInput, type ChunkOutcome, type JobRunner } from '../jobs/runner';
import { jobStore } from '../jobs/store';
import type { PayloadRow } from '../pipeline/messages';
import { ArchiveChunkError, chunkKey, decodeChunk, type ArchiveRow } from './chunk';
import { manifestStore, type ManifestRow } from './manifest';
import { isValidMonth } from './month';

export const RESTORE_JOB = 'restore';

export const RestoreParams = z
  .object({
    projectId: z.string().min(1).max(128),
    month: z.string().refine(isValidMonth, 'must be a month (YYYY-MM)'),
    /** Yield between chunks so live reads keep their latency. */
    pauseMs: z.number().int().min(0).max(60_000).default(100),
  })
  .strict();

export type RestoreParams = z.infer<typeof RestoreParams>;

/**
 * Where a restore stands, kept as the job's cursor: the last chunk number written back, and the
 * running totals that become the job's result (the engine hands complete() no chunk outcomes).
 */
export interface RestoreCursor {
  /** Last chunk number restored; chunks are restored in number order. */
  after: number;
  /** Chunks restored so far. */
  chunks: number;
  /** Rows those chunks hold: every one of them is in ClickHouse now. */
  rows: number;
  /** Rows this job wrote; the rest were already there (a re-run, or an attempt cut short). */
  inserted: number;
}

const START: RestoreCursor = { after: 0, chunks: 0, rows: 0, inserted: 0 };

export function parseRestoreCursor(cursor: string | null): RestoreCursor {
  if (cursor === null) return START;
  const c = JSON.parse(cursor) as Partial<RestoreCursor>;
  const n = (v: unknown) => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : 0);
  return { after: n(c.after), chunks: n(c.chunks), rows: n(c.rows), inserted: n(c.inserted) };
}

/** Ids checked for presence per query (external data, see ClickHouse ValueLists). */
const ID_CHECK_BATCH = 5000;

/** Chunk rows already in `event_payloads` of the project (written by an earlier attempt or restore). */
async function presentIds(ch: ClickHouse, projectId: string, rows: readonly ArchiveRow[]): Promise<Set<string>> {
  const found = new Set<string>();
  for (let i = 0; i < rows.length; i += ID_CHECK_BATCH) {
    const batch = rows.slice(i, i + ID_CHECK_BATCH);
    let from = Infinity;
    let to = -Infinity;
    for (const r of batch) {
      from = Math.min(from, r.createdAtMs);
      to = Math.max(to, r.createdAtMs);
    }
    const hits = await ch.query<{ id: string }>(
      `SELECT toString(id) AS id FROM event_payloads
        WHERE project_id = {p:String}
          AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
          AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64}
          AND toString(id) IN (SELECT value FROM ids)`,
      { p: projectId, ...dateTimeBounds(from, to), from, to },
      { ids: batch.map((r) => r.id) },
    );
    for (const h of hits) found.add(h.id);
  }
  return found;
}

/** Rows per insert: a 50 000-row chunk goes to ClickHouse in a few bounded requests. */
const INSERT_BATCH = 10_000;

/** Writes back the rows ClickHouse does not hold; returns how many it wrote. */
export async function writeBackRows(ch: ClickHouse, projectId: string, rows: readonly ArchiveRow[]): Promise<number> {
  const present = await presentIds(ch, projectId, rows);
  const fresh: PayloadRow[] = rows
    .filter((r) => !present.has(r.id))
    .map((r) => ({ id: r.id, project_id: projectId, created_at_ms: r.createdAtMs, received_at_ms: r.receivedAtMs, payload: r.payload }));
  for (let i = 0; i < fresh.length; i += INSERT_BATCH) await ch.insert('event_payloads', fresh.slice(i, i + INSERT_BATCH));
  return fresh.length;
}

/**
 * The chunks a restore writes back: the verified ones. A chunk never verified was never cleared
 * (its rows are still in ClickHouse, or in a verified chunk of a later run), so it holds nothing
 * to bring back.
 */
export async function restorableChunks(env: Env, projectId: string, month: string): Promise<ManifestRow[]> {
  return (await manifestStore(env.DB).list(projectId, month)).filter((c) => c.verifiedAt !== null);
}

/** The chunk's rows, proven to be the chunk its manifest row describes; a missing or bad object fails the job at once. */
async function readChunk(bucket: R2Bucket, projectId: string, month: string, c: ManifestRow): Promise<ArchiveRow[]> {
  // The manifest row's key must be this project's: a restore never reads another project's object.
  const key = chunkKey(projectId, month, c.number);
  if (c.key !== key) throw new PermanentChunkError(`archive chunk ${c.key}: the manifest names a key that is not ${key}; nothing of it was restored`);
  const obj = await bucket.get(key);
  if (!obj) throw new PermanentChunkError(`archive chunk ${key} is missing from R2; nothing of it was restored`);
  const body = await obj.arrayBuffer();
  try {
    return await decodeChunk(body, { sha256Hex: c.sha256, idsChecksumHex: c.idsChecksum, rowCount: c.rowCount, month, key });
  } catch (err) {
    if (err instanceof ArchiveChunkError) throw new PermanentChunkError(`archive chunk ${key} failed verification (${err.code}): ${err.message}; nothing of it was restored`);
    throw err;
  }
}

/**
 * Before anything is written: every chunk still to restore has an object of the size its manifest
 * row records, so a missing or truncated object fails the job up front instead of halfway.
 */
async function preflight(bucket: R2Bucket, chunks: readonly ManifestRow[]): Promise<void> {
  for (const c of chunks) {
    const head = await bucket.head(c.key);
    if (!head) throw new PermanentChunkError(`archive chunk ${c.key} is missing from R2; nothing was restored from it`);
    if (head.size !== c.compressedBytes) {
      throw new PermanentChunkError(`archive chunk ${c.key} holds ${head.size} bytes, the manifest says ${c.compressedBytes}; nothing was restored from it`);
    }
  }
}

export const restoreRunner: JobRunner = {
  pauseMs: (params) => RestoreParams.parse(params).pauseMs,

  async runChunk(env: Env, job: ChunkInput): Promise<ChunkOutcome> {
    const p = RestoreParams.parse(job.params);
    const chunks = await restorableChunks(env, p.projectId, p.month);
    const at = parseRestoreCursor(job.cursor);
    const remaining = chunks.filter((c) => c.number > at.after);
    let { rowsTotal, rowsProcessed } = job;
    if (rowsTotal === null) {
      rowsTotal = chunks.reduce((n, c) => n + c.rowCount, 0);
      rowsProcessed = rowsTotal - remaining.reduce((n, c) => n + c.rowCount, 0);
      await preflight(env.ARCHIVE, remaining);
    }
    const next = remaining[0];
    const outcome = { maxKey: null, rowsTotal, rowsBefore: rowsProcessed, skippedBefore: job.rowsSkipped, skipped: 0 };
    if (!next) return { ...outcome, cursor: JSON.stringify(at), rows: 0, done: true };

    const rows = await readChunk(env.ARCHIVE, p.projectId, p.month, next);
    const inserted = await writeBackRows(clickhouse(getConfig(env).clickhouse), p.projectId, rows);
    await manifestStore(env.DB).markRestored(p.projectId, p.month, next.number, Date.now());
    const cursor: RestoreCursor = { after: next.number, chunks: at.chunks + 1, rows: at.rows + rows.length, inserted: at.inserted + inserted };
    return { ...outcome, cursor: JSON.stringify(cursor), rows: rows.length, done: remaining.length === 1 };
  },

  /** `{ chunks, rows, inserted }` from the cursor the last chunk committed. */
  async complete(env: Env, job: ChunkInput) {
    const row = await jobStore(env.DB).get(job.id);
    const { chunks, rows, inserted } = parseRestoreCursor(row?.cursor ?? job.cursor);
    return { chunks, rows, inserted };
  },
};
