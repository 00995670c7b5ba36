// The `restore` job: a (project, month)'s archived payloads written back to ClickHouse, chunk by
// chunk (several per job chunk, the next one read and proven while the one before is written), each
// object proven against its manifest row first. The chunks stay in R2.
import { z } from 'zod';
import { clickhouse, tsvField, type ClickHouse } from '../clickhouse/client';
import { dateTimeBounds } from '../clickhouse/time';
import { getConfig } from '../config';
import type { Env } from '../env';
import { PermanentChunkError, type ChunkInput, type ChunkOutcome, type JobRunner } from '../jobs/runner';
import { jobStore } from '../jobs/store';
import { assertSoleWriter, refuseSecondMonthWriter } from './archive-job';
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

/** Ids checked for presence per query (external data, see ClickHouse ValueLists): a whole default chunk at once. */
const ID_CHECK_BATCH = 50_000;

/**
 * Chunk rows already in `event_payloads` of the project (written by an earlier attempt or restore).
 * A chunk whose time range holds no payload of the project at all (the usual case: the month was
 * cleared) needs no id look-up.
 */
async function presentIds(ch: ClickHouse, projectId: string, rows: readonly ArchiveRow[]): Promise<Set<string>> {
  const found = new Set<string>();
  const range = (batch: readonly ArchiveRow[]) => {
    let from = Infinity;
    let to = -Infinity;
    for (const r of batch) {
      from = Math.min(from, r.createdAtMs);
      to = Math.max(to, r.createdAtMs);
    }
    return { p: projectId, ...dateTimeBounds(from, to), from, to };
  };
  const inRange = `project_id = {p:String}
          AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
          AND created_at_ms >= {from:Int64} AND created_at_ms <= {to:Int64}`;
  if (!rows.length) return found;
  const [any] = await ch.query<{ n: number }>(`SELECT count() AS n FROM event_payloads WHERE ${inRange}`, range(rows));
  if (Number(any?.n ?? 0) === 0) return found;
  for (let i = 0; i < rows.length; i += ID_CHECK_BATCH) {
    const batch = rows.slice(i, i + ID_CHECK_BATCH);
    const hits = await ch.query<{ id: string }>(
      `SELECT toString(id) AS id FROM event_payloads WHERE ${inRange} AND toString(id) IN (SELECT value FROM ids)`,
      range(batch),
      { ids: batch.map((r) => r.id) },
    );
    for (const h of hits) found.add(h.id);
  }
  return found;
}

const PAYLOAD_COLUMNS = ['id', 'project_id', 'created_at_ms', 'received_at_ms', 'payload'] as const;

/**
 * Rows per insert. A default 50 000-row chunk goes to ClickHouse as two inserts side by side: an
 * insert is parsed and sorted on one server thread, so two halves take about half the time. When
 * one fails, the other is let finish before the chunk fails, so the retry writes only what is missing.
 */
const INSERT_BATCH = 25_000;

/** Writes back the rows ClickHouse does not hold; returns how many it wrote. */
export async function writeBackRows(ch: ClickHouse, projectId: string, rows: readonly ArchiveRow[]): Promise<number> {
  const present = await presentIds(ch, projectId, rows);
  const project = tsvField(projectId);
  const lines: string[] = [];
  for (const r of rows) {
    if (!present.has(r.id)) lines.push(`${tsvField(r.id)}\t${project}\t${r.createdAtMs}\t${r.receivedAtMs}\t${tsvField(r.payload)}\n`);
  }
  const inserts: Array<Promise<void>> = [];
  for (let i = 0; i < lines.length; i += INSERT_BATCH) inserts.push(ch.insertTabSeparated('event_payloads', PAYLOAD_COLUMNS, lines.slice(i, i + INSERT_BATCH).join('')));
  // Every insert ends before the chunk fails: a retry then finds all that was written.
  const failed = (await Promise.allSettled(inserts)).find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
  return lines.length;
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
  const heads = await Promise.all(chunks.map((c) => bucket.head(c.key)));
  chunks.forEach((c, i) => {
    const head = heads[i];
    if (!head) throw new PermanentChunkError(`archive chunk ${c.key} is missing from R2; nothing was restored from it`);
    if (head.size !== c.compressedBytes) {
      throw new PermanentChunkError(`archive chunk ${c.key} holds ${head.size} bytes, the manifest says ${c.compressedBytes}; nothing was restored from it`);
    }
  });
}

/** A job chunk restores chunks for about this long (the next is started only before it has passed), then commits. */
export const RESTORE_SLICE_MS = 15_000;

export const restoreRunner: JobRunner = {
  pauseMs: (params) => RestoreParams.parse(params).pauseMs,

  async refuseRetry(env, job) {
    const p = RestoreParams.safeParse(job.params);
    if (p.success) await refuseSecondMonthWriter(env, job.id, p.data);
  },

  async runChunk(env: Env, job: ChunkInput): Promise<ChunkOutcome> {
    const started = Date.now();
    const p = RestoreParams.parse(job.params);
    // An archive of the month running beside it would clear what it writes back.
    await assertSoleWriter(env, job.id, p);
    const chunks = await restorableChunks(env, p.projectId, p.month);
    const at = parseRestoreCursor(job.cursor);
    const remaining = chunks.filter((c) => c.number > at.after);
    let { rowsTotal, rowsProcessed } = job;
    if (rowsTotal === null) {
      rowsTotal = chunks.reduce((n, c) => n + c.rowCount, 0);
      rowsProcessed = rowsTotal - remaining.reduce((n, c) => n + c.rowCount, 0);
      await preflight(env.ARCHIVE, remaining);
    }
    const outcome = { maxKey: null, rowsTotal, rowsBefore: rowsProcessed, skippedBefore: job.rowsSkipped, skipped: 0 };
    if (!remaining.length) return { ...outcome, cursor: JSON.stringify(at), rows: 0, done: true };

    // Chunk after chunk until the slice's time is up: the next chunk is read from R2 and proven
    // while the one before is written to ClickHouse. A chunk that fails its proof fails the job
    // once the chunks before it are written and marked, as if they had been restored alone.
    const deadline = started + RESTORE_SLICE_MS;
    const ch = clickhouse(getConfig(env).clickhouse);
    const manifests = manifestStore(env.DB);
    const read = (c: ManifestRow) => {
      const r = readChunk(env.ARCHIVE, p.projectId, p.month, c);
      r.catch(() => {}); // awaited in turn below
      return r;
    };
    const cursor: RestoreCursor = { ...at };
    let slicedRows = 0;
    let i = 0;
    let pending = read(remaining[0]!);
    for (;;) {
      const c = remaining[i]!;
      const rows = await pending;
      const goOn = i + 1 < remaining.length && Date.now() < deadline;
      if (goOn) pending = read(remaining[i + 1]!);
      const inserted = await writeBackRows(ch, p.projectId, rows);
      await manifests.markRestored(p.projectId, p.month, c.number, Date.now());
      cursor.after = c.number;
      cursor.chunks += 1;
      cursor.rows += rows.length;
      cursor.inserted += inserted;
      slicedRows += rows.length;
      i += 1;
      if (!goOn) break;
    }
    return { ...outcome, cursor: JSON.stringify(cursor), rows: slicedRows, done: i === remaining.length };
  },

  /** `{ chunks, rows, inserted }` from the cursor the last chunk committed. */
  async complete(env: Env, job: ChunkInput) {
    const row = await jobStore(env.DB).get(job.id);
    const { chunks, rows, inserted } = parseRestoreCursor(row?.cursor ?? job.cursor);
    return { chunks, rows, inserted };
  },
};
