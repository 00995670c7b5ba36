// The `archive` job: one (project, month) of raw payloads into append-only R2 chunks. A payload
// leaves ClickHouse only after its chunk was read back and proved to hold exactly the rows it was
// made from; every step may be cut short and run again, and a re-run converges.
import { z } from 'zod';
import { clickhouse, type ClickHouse } from '../clickhouse/client';
import type { QueryParams } from '../clickhouse/params';
import { deleteRows, dropPartitionsOf, unparkPartitions, withParked } from '../clickhouse/mutations';
import { dateTimeBounds } from '../clickhouse/time';
import { getConfig } from '../config';
import type { Env } from '../env';
import { ApiError } from '../errors';
import { PermanentChunkError, type ChunkInput, type ChunkOutcome, type JobRunner } from '../jobs/runner';
import { jobStore } from '../jobs/store';
import { adoptEncodedChunk, ArchiveChunkError, chunkKey, chunkKeyPrefix, decodeChunk, gzipBytes, parseChunkKey, sha256Hex, type ArchiveChunkManifest, type ArchiveRow } from './chunk';
import { archiveState, ERASURE_JOB_TYPES, monthJobs, MONTH_JOB_TYPES } from './listing';
import { manifestStore, toChunkManifest, type ManifestRow, type ManifestStore } from './manifest';
import { isValidMonth, manualArchiveRefusal, monthBoundsMs } from './month';
import { putChunkCreateOnly, readObject } from './r2';

/** Where the test-only crash seam can stop a chunk: each is a point a real crash may hit. */
export const ARCHIVE_FAULT_POINTS = ['afterUpload', 'afterManifest', 'afterVerify', 'midClear', 'afterMove'] as const;

/**
 * TEST-ONLY crash seam, accepted in job params but never from the admin route: the job stops at
 * `at` while writing chunk `chunk` (default: the first it writes), leaving R2, D1 and ClickHouse
 * exactly as a crash there would. `midClear` stops in the clear that covers chunk `chunk` (one
 * delete for every chunk its job chunk verified): it deletes the first half of those payloads (by
 * event time), then stops. `afterMove` stops a clear by partition drop (`dropPartitionsOf`) right
 * after the month's partition was moved aside, before anything went back or was dropped (servers
 * that cannot move a partition never get there). It fires on a job's first attempt only (before any retry): `fail` fails the job at once
 * (re-run it with a new job or a retry), `retry` throws an ordinary error the engine retries.
 */
export const ArchiveFaults = z.object({
  at: z.enum(ARCHIVE_FAULT_POINTS),
  chunk: z.number().int().min(1).optional(),
  mode: z.enum(['fail', 'retry']).default('fail'),
});

export const ArchiveParams = z.object({
  projectId: z.string().min(1).max(128),
  month: z.string().refine(isValidMonth, 'not a month (YYYY-MM)'),
  /** Rows per chunk for this job; ARCHIVE_CHUNK_ROWS when left out. */
  chunkRows: z.number().int().min(1).max(1_000_000).optional(),
  /**
   * An operator's decision after a verification failure: a chunk that was never verified and whose
   * object fails verification is deleted (object and manifest row; nothing was cleared relying on
   * it) and its payloads, still in ClickHouse, go into a new chunk. Without it such a chunk fails the job.
   */
  discardUnverified: z.boolean().optional(),
  /** At most this many archive chunks per job chunk (not offered by the admin route); else as many as fit in ARCHIVE_SLICE_MS. */
  sliceChunks: z.number().int().min(1).max(10_000).optional(),
  startedBy: z.enum(['operator', 'sweep']).optional(),
  faults: ArchiveFaults.optional(),
});
export type ArchiveParams = z.infer<typeof ArchiveParams>;

/** What a finished archive job reports (its `result`). */
export interface ArchiveResult {
  projectId: string;
  month: string;
  /** Chunks this job wrote, their events and bytes. */
  chunks: number;
  rows: number;
  rawBytes: number;
  compressedBytes: number;
  /** Every chunk of the month now, and its state once the job ended. */
  monthChunks: number;
  state: ReturnType<typeof archiveState>;
  /** Payloads of the month in ClickHouse when the job ended (late data that arrived meanwhile). */
  pendingRows: number;
}

/** The yield between two job chunks: each one ends in a ClickHouse delete, let readers through. */
export const ARCHIVE_PAUSE_MS = 200;

/**
 * A job chunk writes and verifies archive chunks for about this long (the next chunk is started
 * only before it has passed), then clears all their payloads with one delete and commits: one
 * mutation and one queue round trip per slice instead of per chunk.
 */
export const ARCHIVE_SLICE_MS = 15_000;

/**
 * `reconcile`: finishing what earlier runs left (chunk numbers after `after`); `archive`: new
 * chunks of the rows after (afterMs, afterId), in (createdAt, id) order.
 */
type Cursor = { phase: 'reconcile'; after: number } | { phase: 'archive'; afterMs: number; afterId: string };

interface Run {
  env: Env;
  jobId: string;
  p: ArchiveParams;
  bucket: R2Bucket;
  ch: ClickHouse;
  manifests: ManifestStore;
  chunkRows: number;
  startMs: number;
  endMs: number;
  /** The job ran (part of) a chunk before: the seam never fires twice. */
  retried: boolean;
}

const log = (msg: string, fields: Record<string, unknown>) => console.log(JSON.stringify({ msg, ...fields }));

function parseCursor(text: string | null): Cursor | null {
  if (!text) return null;
  try {
    const c = JSON.parse(text) as Cursor;
    if (c.phase === 'reconcile' && Number.isInteger(c.after)) return c;
    if (c.phase === 'archive' && Number.isSafeInteger(c.afterMs) && typeof c.afterId === 'string') return c;
  } catch {
    /* an unreadable cursor re-plans */
  }
  return null;
}

function crashPoint(run: Run, at: (typeof ARCHIVE_FAULT_POINTS)[number], number: number): string | null {
  const f = run.p.faults;
  if (!f || f.at !== at || run.retried || (f.chunk !== undefined && f.chunk !== number)) return null;
  return `injected crash (test seam) ${at} of chunk ${number}`;
}

function crash(run: Run, message: string): never {
  throw run.p.faults?.mode === 'retry' ? new Error(message) : new PermanentChunkError(message);
}

function maybeCrash(run: Run, at: (typeof ARCHIVE_FAULT_POINTS)[number], number: number): void {
  const message = crashPoint(run, at, number);
  if (message) crash(run, message);
}

/** Partition bounds plus exact event-time bounds `[fromMs, toMs]` within the project. */
function timeWhere(fromMs: number, toMs: number) {
  return {
    sql: `project_id = {p:String}
        AND created_at >= toDateTime({fromSec:Int64}) AND created_at <= toDateTime({toSec:Int64})
        AND created_at_ms >= {fromMs:Int64} AND created_at_ms <= {toMs:Int64}`,
    params: { ...dateTimeBounds(fromMs, toMs), fromMs, toMs },
  };
}

/** Distinct payload ids of the month still in ClickHouse. */
async function countPending(run: Run, fromMs = run.startMs, toMs = run.endMs - 1): Promise<number> {
  const w = timeWhere(fromMs, toMs);
  const [r] = await run.ch.query<{ n: number }>(`SELECT uniqExact(id) AS n FROM ${withParked('event_payloads', 'id', w.sql)} AS payloads`, { p: run.p.projectId, ...w.params });
  return Number(r?.n ?? 0);
}

/** Which of `ids` (events of `[fromMs, toMs]`) still have a payload in ClickHouse. */
async function idsInClickHouse(run: Run, ids: readonly string[], fromMs: number, toMs: number): Promise<string[]> {
  if (!ids.length) return [];
  const w = timeWhere(fromMs, toMs);
  const rows = await run.ch.query<{ id: string }>(
    `SELECT DISTINCT toString(id) AS id FROM ${withParked('event_payloads', 'id', `${w.sql} AND toString(id) IN (SELECT value FROM ids)`)} AS payloads`,
    { p: run.p.projectId, ...w.params },
    { ids },
  );
  return rows.map((r) => r.id);
}

/**
 * Deletes the payloads `where` names (verified chunks' rows). A month that holds nothing else
 * (every project's payloads of it archived) loses its whole partition at once where the server can
 * do that without racing a writer; one shared with other rows loses just these. `chunks`: the
 * chunks whose clear this is, for the test seam.
 */
async function clearPayloads(run: Run, where: string, params: QueryParams, chunks: readonly number[] = []): Promise<void> {
  const afterMove = () => {
    const message = chunks.map((n) => crashPoint(run, 'afterMove', n)).find((m) => m !== null);
    if (message) crash(run, message);
  };
  const drop = (await aloneOnMonth(run)) ? await dropPartitionsOf(run.ch, 'event_payloads', where, params, { afterMove }) : null;
  if (drop?.dropped) log('archive: partition dropped, it held nothing but archived payloads', { job: run.jobId, month: run.p.month, partitions: drop.dropped });
  else await deleteRows(run.ch, 'event_payloads', where, params);
}

/**
 * A partition drop moves the month's rows of every project for a moment: it is tried only while no
 * other archive or restore job of the month (any project) and no erasure or project deletion (any
 * project) is under way, so that no two drops of one partition, and no erasure's count, meet.
 */
async function aloneOnMonth(run: Run): Promise<boolean> {
  const monthHolders = await monthJobs(run.env.DB, { types: MONTH_JOB_TYPES, month: run.p.month, holdingOnly: true, limit: 2 });
  if (monthHolders.some((j) => j.id !== run.jobId)) return false;
  return (await monthJobs(run.env.DB, { types: ERASURE_JOB_TYPES, holdingOnly: true, limit: 1 })).length === 0;
}

/**
 * Deletes exactly `ids` (events of `[fromMs, toMs]`) from event_payloads: the ids go to the
 * `archive_ids` scratch table first, since a mutation cannot read the request's external data, and
 * the delete checks that none is left. Deleting an id that is already gone is a no-op.
 */
async function clearIds(run: Run, number: number, ids: readonly string[], fromMs: number, toMs: number): Promise<void> {
  if (!ids.length) return;
  const batch = `${run.p.projectId}/${run.p.month}/${number}`;
  // A cut-short clear of this chunk may have left its batch: start from nothing, never from a leftover.
  await run.ch.command('ALTER TABLE archive_ids DROP PARTITION {b:String}', { b: batch });
  await run.ch.insert(
    'archive_ids',
    ids.map((id) => ({ batch, id })),
  );
  const w = timeWhere(fromMs, toMs);
  await clearPayloads(run, `${w.sql} AND id IN (SELECT id FROM archive_ids WHERE batch = {b:String})`, { p: run.p.projectId, ...w.params, b: batch });
  await run.ch.command('ALTER TABLE archive_ids DROP PARTITION {b:String}', { b: batch });
  const left = await idsInClickHouse(run, ids, fromMs, toMs);
  if (left.length) throw new Error(`${left.length} payloads of chunk ${batch} are still in ClickHouse after their delete; the retry clears them`);
}

/**
 * The chunks one job chunk wrote and verified, waiting for their common clear. Their ids go to one
 * `archive_ids` batch, named after the first chunk's number like a single chunk's clear (so a
 * leftover of a cut-short slice is dropped by whichever clear uses that name next), as each chunk
 * is verified; nothing is staged for a chunk that was not.
 */
interface Slice {
  batch: string | null;
  chunks: Array<{ number: number; rows: number }>;
  rows: number;
  fromMs: number;
  toMs: number;
  /** Inserts of staged ids still under way (awaited before the delete). */
  staging: Array<Promise<void>>;
  /** Event times of the staged rows, kept only while the midClear seam is armed (tests). */
  times: number[] | null;
}

function newSlice(run: Run): Slice {
  return { batch: null, chunks: [], rows: 0, fromMs: Infinity, toMs: -Infinity, staging: [], times: run.p.faults?.at === 'midClear' ? [] : null };
}

/** Stages a verified chunk's ids for the slice's clear. */
async function stageChunk(run: Run, slice: Slice, number: number, rows: readonly ArchiveRow[]): Promise<void> {
  if (slice.batch === null) {
    slice.batch = `${run.p.projectId}/${run.p.month}/${number}`;
    // A cut-short clear may have left this batch: start from nothing, never from a leftover.
    await run.ch.command('ALTER TABLE archive_ids DROP PARTITION {b:String}', { b: slice.batch });
  }
  const batch = slice.batch;
  const staged = run.ch.insert(
    'archive_ids',
    rows.map((r) => ({ batch, id: r.id })),
  );
  staged.catch(() => {}); // awaited (and its error thrown) by clearSlice
  slice.staging.push(staged);
  slice.chunks.push({ number, rows: rows.length });
  slice.rows += rows.length;
  slice.fromMs = Math.min(slice.fromMs, rows[0]!.createdAtMs);
  slice.toMs = Math.max(slice.toMs, rows.at(-1)!.createdAtMs);
  if (slice.times) for (const r of rows) slice.times.push(r.createdAtMs);
}

/**
 * Clears every payload of the slice's verified chunks with one delete, checks that none is left,
 * and marks the chunks cleared. A cut-short clear leaves verified, uncleared chunks: the next run
 * (or the retry) settles them one by one.
 */
async function clearSlice(run: Run, slice: Slice): Promise<void> {
  if (slice.batch === null || !slice.chunks.length) return;
  await Promise.all(slice.staging);
  const w = timeWhere(slice.fromMs, slice.toMs);
  const inBatch = 'id IN (SELECT id FROM archive_ids WHERE batch = {b:String})';
  const params = { p: run.p.projectId, ...w.params, b: slice.batch };
  const midClear = slice.chunks.map((c) => crashPoint(run, 'midClear', c.number)).find((m) => m !== null);
  if (midClear && slice.times) {
    const times = [...slice.times].sort((a, b) => a - b);
    const cut = times[Math.ceil(times.length / 2) - 1]!;
    await deleteRows(run.ch, 'event_payloads', `${w.sql} AND ${inBatch} AND created_at_ms <= {cut:Int64}`, { ...params, cut });
    crash(run, midClear);
  }
  await clearPayloads(run, `${w.sql} AND ${inBatch}`, params, slice.chunks.map((c) => c.number));
  const [left] = await run.ch.query<{ n: number }>(`SELECT count() AS n FROM ${withParked('event_payloads', 'id', `${w.sql} AND ${inBatch}`)} AS payloads`, params);
  if (Number(left?.n ?? 0) > 0) {
    throw new Error(`${left!.n} payloads of chunks ${slice.chunks.map((c) => c.number).join(', ')} are still in ClickHouse after their delete; the retry clears them`);
  }
  await run.ch.command('ALTER TABLE archive_ids DROP PARTITION {b:String}', { b: slice.batch });
  const now = Date.now();
  await Promise.all(slice.chunks.map((c) => run.manifests.markCleared(run.p.projectId, run.p.month, c.number, now)));
}

function verificationFailed(key: string, err: ArchiveChunkError, when: string): PermanentChunkError {
  return new PermanentChunkError(`archive chunk ${key} failed verification ${when} (${err.code}): ${err.message}. Nothing of it was cleared from ClickHouse`);
}

/** Reads a recorded chunk back and proves it is the one its manifest row describes. */
async function readChunk(run: Run, row: ManifestRow, when: string): Promise<ArchiveRow[] | 'missing'> {
  const body = await readObject(run.bucket, row.key);
  if (!body) return 'missing';
  try {
    return await decodeChunk(body, { ...toChunkManifest(row), month: run.p.month, key: row.key });
  } catch (err) {
    if (err instanceof ArchiveChunkError) throw verificationFailed(row.key, err, when);
    throw err;
  }
}

/**
 * Finishes one recorded chunk: proves its object (if not yet verified, or when its ids are needed),
 * clears whatever of its payloads is in ClickHouse (a cut-short clear, or a restore), marks it.
 * A never-verified chunk whose object is gone is forgotten (nothing was cleared relying on it).
 */
async function settleChunk(run: Run, row: ManifestRow): Promise<'settled' | 'forgotten' | 'discarded'> {
  let rows: ArchiveRow[] | 'missing';
  try {
    rows = await readChunk(run, row, 'when it was read back');
  } catch (err) {
    if (err instanceof PermanentChunkError && row.verifiedAt === null && run.p.discardUnverified) {
      await run.bucket.delete(row.key);
      await run.manifests.remove(row.projectId, row.month, row.number);
      log('archive chunk discarded: it failed verification and was never verified', { job: run.jobId, key: row.key, error: err.message });
      return 'discarded';
    }
    throw err;
  }
  if (rows === 'missing') {
    if (row.verifiedAt === null) {
      await run.manifests.remove(row.projectId, row.month, row.number);
      log('archive chunk forgotten: never verified and its object is gone', { job: run.jobId, key: row.key });
      return 'forgotten';
    }
    throw new PermanentChunkError(`archive chunk ${row.key} was verified but its object is missing from R2: its payloads cannot be checked or cleared again; see the README (archives: a missing chunk)`);
  }
  if (row.verifiedAt === null) await run.manifests.markVerified(row.projectId, row.month, row.number, Date.now());
  const present = await idsInClickHouse(
    run,
    rows.map((r) => r.id),
    row.firstCreatedAtMs,
    row.lastCreatedAtMs,
  );
  await clearIds(run, row.number, present, row.firstCreatedAtMs, row.lastCreatedAtMs);
  if (row.clearedAt === null || row.restoredAt !== null) await run.manifests.markCleared(row.projectId, row.month, row.number, Date.now());
  if (present.length) log('archive chunk re-cleared', { job: run.jobId, key: row.key, rows: present.length });
  return 'settled';
}

/**
 * Objects under the month's prefix that no manifest row names were uploaded by a run cut short
 * before it recorded them: nothing was cleared relying on them (clearing needs a verified row), so
 * they are deleted. The manifest is read again just before each delete.
 */
async function removeOrphans(run: Run): Promise<number> {
  const known = new Set((await run.manifests.list(run.p.projectId, run.p.month)).map((r) => r.key));
  const prefix = chunkKeyPrefix(run.p.projectId, run.p.month);
  let removed = 0;
  let cursor: string | undefined;
  do {
    const page = await run.bucket.list({ prefix, ...(cursor ? { cursor } : {}) });
    for (const obj of page.objects) {
      if (known.has(obj.key)) continue;
      const parsed = parseChunkKey(obj.key);
      if (!parsed || parsed.projectId !== run.p.projectId || parsed.month !== run.p.month) {
        log('archive: an object under a month prefix that is not a chunk key is left alone', { job: run.jobId, key: obj.key });
        continue;
      }
      if (await run.manifests.get(run.p.projectId, run.p.month, parsed.number)) continue;
      await run.bucket.delete(obj.key);
      removed += 1;
      log('archive: unrecorded chunk object removed', { job: run.jobId, key: obj.key, bytes: obj.size });
    }
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  return removed;
}

/**
 * Settles the month's chunks after number `after` that need it, until about `chunkRows` rows were
 * read back; returns the last number settled when there is more, else null. A verified, cleared
 * chunk is read only when ClickHouse holds rows within its time range again.
 */
async function reconcileSlice(run: Run, after: number): Promise<number | null> {
  const chunks = (await run.manifests.list(run.p.projectId, run.p.month)).filter((c) => c.number > after);
  if (!chunks.length) return null;
  const monthPending = await countPending(run);
  let readRows = 0;
  for (const c of chunks) {
    const finished = c.verifiedAt !== null && c.clearedAt !== null && c.restoredAt === null;
    if (finished && (monthPending === 0 || (await countPending(run, c.firstCreatedAtMs, c.lastCreatedAtMs)) === 0)) continue;
    await settleChunk(run, c);
    readRows += c.rowCount;
    if (readRows >= run.chunkRows && c !== chunks.at(-1)) return c.number;
  }
  return null;
}

/**
 * gzip level of the chunks ClickHouse compresses (beside the Worker's work on the chunk before). On
 * the bench's payloads 7 gave 8.5:1 in about 0.45 s of ClickHouse's time per 50 000 rows; 6 gave
 * 8.2:1, and 8 or 9 gave 8.8:1 in 0.55–0.65 s, which made ClickHouse the slow side.
 */
export const CHUNK_GZIP_LEVEL = 7;

/** Largest epoch ms a `DateTime` (seconds, UInt32) holds on both generations: times past it are not formatted by ClickHouse. */
const MAX_DATETIME_MS = 4_294_967_295_999;

/** `column` (String) as the contents of a JSON string: backslash and quote escaped, control characters as `\u00XX`. */
function jsonStringSql(column: string): string {
  let sql = `replaceAll(replaceAll(${column}, '\\\\', '\\\\\\\\'), '"', '\\\\"')`;
  for (let c = 0; c < 0x20; c++) {
    const hex = c.toString(16).padStart(2, '0');
    sql = `replaceAll(${sql}, unhex('${hex}'), '\\\\u00${hex}')`;
  }
  return sql;
}

/**
 * `column` (Int64 epoch ms) as `Date.prototype.toISOString` writes it; a time no `DateTime` holds
 * comes out as text no reader takes for a time, so the chunk is refused before it is recorded.
 */
function isoTimeSql(column: string): string {
  return `if(${column} >= 0 AND ${column} <= ${MAX_DATETIME_MS},
    concat(replaceOne(toString(toDateTime(intDiv(${column}, 1000), 'UTC')), ' ', 'T'), '.', substring(toString(1000 + ${column} % 1000), 2), 'Z'),
    'not a representable time')`;
}

/**
 * One chunk line per row, in the format `encodeChunk` writes (`{"id":…,"deviceId":…,"createdAt":…,
 * "receivedAt":…,"payload":<payload>}`; a control character in a device id comes out as `\u00XX`).
 * The payload goes in as stored. One holding a raw newline splits its line, and the text is refused
 * before the chunk is recorded: a JSON payload's first piece never makes a line whose payload is
 * JSON (a complete value would have to end before the newline), and whatever the pieces, the text
 * then holds more lines than the rows ClickHouse counted for the window (`windowMismatch`). The
 * gateway never stores such a payload (each is `JSON.stringify` output). Testing for it here would
 * cost more than the rest of the line: an `if` over the payload column copies every payload.
 */
const CHUNK_LINE_SQL = `concat('{"id":"', p.sid, '","deviceId":"', ${jsonStringSql('d.device_id')}, '","createdAt":"', ${isoTimeSql('p.created_at_ms')},
  '","receivedAt":"', ${isoTimeSql('p.received_at_ms')}, '","payload":', p.payload, '}')`;

/**
 * A query's answer (TabSeparatedRaw) gzipped: by ClickHouse at `level`, or here, by the Worker, when
 * the server (or a proxy before it) does not compress its answers.
 */
export async function gzippedAnswer(ch: ClickHouse, sql: string, params: QueryParams, level: number): Promise<Uint8Array> {
  const { bytes, gzipped } = await ch.queryGzip(sql, params, level);
  return gzipped ? bytes : gzipBytes(bytes);
}

/** How long the job waits for the next window's queries to leave before it works on a chunk. */
const SEND_AHEAD_MS = 1;

/** Windows whose queries are under way while the Worker works on a chunk. */
const WINDOWS_AHEAD = 1;

/**
 * What ClickHouse says of a window apart from its text, computed from the rows themselves: how many
 * events it holds, its last one, and the ids checksum of their ids (`idsChecksum`).
 */
export interface WindowFacts {
  rows: number;
  last: { afterMs: number; afterId: string };
  idsChecksum: string;
}

/** The next window of the month's payloads, its queries under way. */
interface Window {
  /** Settles once the window's queries have been sent. */
  sent: Promise<void>;
  /** The chunk's gzip JSON Lines; null: nothing is left after the cursor. */
  body: Promise<Uint8Array | null>;
  facts: Promise<WindowFacts | null>;
}

/**
 * The first `limit` payload rows of the month after the cursor, in (createdAt, id) order (the id as
 * text, as the cursor and the chunk compare it), each id once, with their device, as one chunk's
 * gzip JSON Lines that ClickHouse formats (a device's lines together) and compresses itself: the
 * Worker takes in ~2.6 MB instead of ~20 MB of rows, and neither builds lines nor compresses.
 *
 * A small query first bounds the window on event times alone (the time of the `limit`-th stored
 * row, copies counted: a top-k integer sort whatever the month holds, so no payload outside the
 * window is read); with that one bound, the window's facts (`WindowFacts`, which the chunk's
 * lines must match) and the chunk's text leave side by side, the facts first. The facts name the
 * next window's cursor, so the job sends the next window's queries as soon as they arrive, and
 * ClickHouse makes the next chunk while the Worker works on this one. A row written behind the cursor after its window was
 * read (late data) waits in ClickHouse for the next run, like any late row.
 */
function readWindow(run: Run, afterMs: number, afterId: string, limit: number): Window {
  const w = timeWhere(run.startMs, run.endMs - 1);
  const after = `${w.sql} AND (created_at_ms > {afterMs:Int64} OR (created_at_ms = {afterMs:Int64} AND toString(id) > {afterId:String}))`;
  const base = { p: run.p.projectId, ...w.params, afterMs, afterId, limit };
  const requests = run.ch
    .queryFields(`SELECT count(), max(t) FROM (SELECT created_at_ms AS t FROM event_payloads WHERE ${after} ORDER BY t LIMIT {limit:UInt32})`, base, 2)
    .then(([bound]) => {
      if (!bound || Number(bound[0]) === 0) return null;
      const params = { ...base, toMs: Number(bound[1]) };
      const window = `${after} AND created_at_ms <= {toMs:Int64}`;
      const rows = `SELECT id, toString(id) AS sid, created_at_ms, received_at_ms, payload FROM event_payloads WHERE ${window}
         ORDER BY created_at_ms, sid LIMIT 1 BY id LIMIT {limit:UInt32}`;
      // The same rows as the text's, without their payloads; the ids checksum as `idsChecksum` makes it.
      // Sent first: a server that runs one query at a time (the chDB shim) answers them before the
      // text, so the next window's queries are queued while this text is made.
      const ids = `SELECT toString(id) AS sid, created_at_ms FROM event_payloads WHERE ${window} ORDER BY created_at_ms, sid LIMIT 1 BY id LIMIT {limit:UInt32}`;
      const facts = run.ch
        .queryFields(
          `SELECT count(), argMax(created_at_ms, (created_at_ms, sid)), argMax(sid, (created_at_ms, sid)),
             lower(hex(SHA256(arrayStringConcat(arraySort(groupArray(sid)), '\\n'))))
           FROM (${ids})`,
          params,
          4,
        )
        .then(([row]): WindowFacts | null =>
          row && Number(row[0]) > 0 ? { rows: Number(row[0]), last: { afterMs: Number(row[1]), afterId: row[2]! }, idsChecksum: row[3]! } : null,
        );
      const body = gzippedAnswer(
        run.ch,
        `SELECT ${CHUNK_LINE_SQL}
         FROM (${rows}) AS p
         ANY LEFT JOIN (SELECT id, device_id FROM events WHERE ${window}) AS d USING id
         ORDER BY d.device_id, p.created_at_ms, p.sid`,
        params,
        CHUNK_GZIP_LEVEL,
      );
      return { body, facts };
    });
  return {
    sent: requests.then(() => {}),
    body: requests.then((r) => r?.body ?? null),
    facts: requests.then((r) => r?.facts ?? null),
  };
}

/**
 * The window after `prev`, its queries sent as soon as ClickHouse has told `prev`'s last row (long
 * before `prev`'s text is made): ClickHouse makes two chunks' text at once. Nothing when `prev` held
 * nothing.
 */
function readWindowAfter(run: Run, prev: Window): Window {
  const next = prev.facts.then((f) => (f ? readWindow(run, f.last.afterMs, f.last.afterId, run.chunkRows) : null));
  return {
    sent: next.then((w) => w?.sent),
    body: next.then((w) => w?.body ?? null),
    facts: next.then((w) => w?.facts ?? null),
  };
}

/**
 * Why a chunk's rows are not the window ClickHouse described (`facts`), or null when they are:
 * their number (at most `maxRows`), their last row in (createdAt, id) order, and their ids checksum
 * against the one ClickHouse computed from the rows it selected. Rows written or merged while the
 * window was read are the usual cause; reading the window again settles it.
 */
export function windowMismatch(rows: readonly ArchiveRow[], idsChecksumHex: string, facts: WindowFacts, maxRows: number): string | null {
  const last = rows.at(-1);
  if (rows.length !== facts.rows || rows.length > maxRows || !last || last.createdAtMs !== facts.last.afterMs || last.id !== facts.last.afterId) {
    return `its text holds ${rows.length} events ending at ${last?.id ?? 'none'}, ClickHouse counted ${facts.rows} ending at ${facts.last.afterId}`;
  }
  if (idsChecksumHex !== facts.idsChecksum) return `its ids checksum ${idsChecksumHex} is not the ${facts.idsChecksum} ClickHouse computed from the rows it selected`;
  return null;
}

/**
 * Reads a chunk object just uploaded back from R2 and proves it before anything records or clears
 * it: it has the SHA-256 it was uploaded with, it inflates, every line is a chunk line of the month
 * (as `encodeChunk` checks its rows), and its rows are the window ClickHouse described. An object
 * that fails was never recorded, so nothing relies on it: when this attempt created it, it is
 * deleted before the error goes up.
 */
async function proveUpload(
  run: Run,
  number: number,
  upload: { key: string; sha256Hex: string; created: boolean },
  facts: WindowFacts,
): Promise<{ manifest: ArchiveChunkManifest; rows: ArchiveRow[] }> {
  const refuse = async (err: Error): Promise<never> => {
    // Only an object this attempt created, and only while no manifest row names it: an object that
    // was already there may be another run's of this very job (a watchdog re-kick beside a slow
    // run) and is left to the next run's orphan check.
    try {
      if (upload.created && !(await run.manifests.get(run.p.projectId, run.p.month, number))) await run.bucket.delete(upload.key);
    } catch (deleteErr) {
      log('archive: a refused upload was not deleted; the next run removes it', { job: run.jobId, key: upload.key, error: String(deleteErr) });
    }
    throw err;
  };
  const stored = await readObject(run.bucket, upload.key);
  if (!stored) throw new Error(`archive chunk ${upload.key} is missing from R2 right after its upload; the retry writes it again`);
  const sha = await sha256Hex(stored);
  // R2 checked the SHA-256 on upload, so the object is most likely another run's by now (a
  // re-kicked run that removed this one as an orphan): left alone, and the retry starts over.
  if (sha !== upload.sha256Hex) throw new Error(`archive chunk ${upload.key} read back right after its upload has SHA-256 ${sha}, not the ${upload.sha256Hex} it was uploaded with; the retry writes it again`);
  let chunk;
  try {
    chunk = await adoptEncodedChunk({ projectId: run.p.projectId, month: run.p.month, number, body: stored });
  } catch (err) {
    if (!(err instanceof ArchiveChunkError)) throw err;
    // A broken transfer from ClickHouse (the object is the bytes it sent): the retry reads the window again.
    if (err.code === 'not_gzip') return refuse(new Error(`chunk ${number} of ${run.p.month}: ${err.message}; the retry reads it again`));
    return refuse(new PermanentChunkError(`chunk ${number} of ${run.p.month} cannot be written (${err.code}): ${err.message}`));
  }
  const mismatch = chunk ? windowMismatch(chunk.rows, chunk.manifest.idsChecksumHex, facts, run.chunkRows) : 'its text is empty';
  if (mismatch || !chunk) return refuse(new Error(`chunk ${number} of ${run.p.month}: ${mismatch}; the retry reads the window again`));
  return chunk;
}

/**
 * One new chunk from a window's gzip JSON Lines as ClickHouse made them: uploaded create-only with
 * their SHA-256, read back and proven (`proveUpload`), recorded, marked verified, then its ids staged
 * for the slice's clear (a chunk is cleared only once verified, and only by clearSlice or
 * settleChunk). The object is inflated and its lines checked once, on the copy read back from R2.
 */
async function writeChunk(run: Run, body: Uint8Array, facts: WindowFacts, slice: Slice): Promise<void> {
  const number = await run.manifests.nextNumber(run.p.projectId, run.p.month);
  const upload = { key: chunkKey(run.p.projectId, run.p.month, number), sha256Hex: await sha256Hex(body), rowCount: facts.rows, idsChecksumHex: facts.idsChecksum, created: true };
  if ((await putChunkCreateOnly(run.bucket, { manifest: upload, body })) === 'exists') {
    upload.created = false;
    // Never overwritten: an object already there is reused only when it is this very chunk.
    const there = await readObject(run.bucket, upload.key);
    if (!there || (await sha256Hex(there)) !== upload.sha256Hex) {
      throw new Error(`chunk key ${upload.key} already holds an object that is not this chunk (an unrecorded upload of a cut-short run); the retry removes it`);
    }
  }
  maybeCrash(run, 'afterUpload', number);
  const proven = await proveUpload(run, number, upload, facts);
  await run.manifests.insert(proven.manifest, run.jobId, Date.now());
  const row = await run.manifests.get(run.p.projectId, run.p.month, number);
  if (!row || row.sha256 !== proven.manifest.sha256Hex) throw new Error(`chunk ${upload.key} was recorded by another writer meanwhile; the retry starts over`);
  maybeCrash(run, 'afterManifest', number);
  await run.manifests.markVerified(row.projectId, row.month, row.number, Date.now());
  maybeCrash(run, 'afterVerify', number);
  // Only ids and times are needed from here on: the payload texts (slices of the whole text) go.
  await stageChunk(
    run,
    slice,
    number,
    proven.rows.map((r) => ({ ...r, payload: '' })),
  );
}

/**
 * Jobs of one (project, month) run one at a time, and never beside an erasure of the project: of
 * two archive or restore jobs holding the month, the older goes on and the newer fails at once.
 */
/**
 * Fails the job at once when an older archive or restore job holds its (project, month), or an
 * erasure or deletion of its project is under way: one writer of a month's chunks at a time.
 */
export async function assertSoleWriter(env: Env, jobId: string, p: { projectId: string; month: string }): Promise<void> {
  const mine = await jobStore(env.DB).get(jobId);
  const holders = await monthJobs(env.DB, { types: MONTH_JOB_TYPES, projectId: p.projectId, month: p.month, holdingOnly: true });
  const older = holders.find((j) => j.id !== jobId && (!mine || j.createdAt < mine.createdAt || (j.createdAt === mine.createdAt && j.id < jobId)));
  if (older) throw new PermanentChunkError(`another ${older.type} job (${older.id}, ${older.state}) holds ${p.projectId} ${p.month}: one job per month at a time`);
  const erasing = await monthJobs(env.DB, { types: ERASURE_JOB_TYPES, projectId: p.projectId, holdingOnly: true });
  if (erasing.length) throw new PermanentChunkError(`a ${erasing[0]!.type} job (${erasing[0]!.id}) of project ${p.projectId} is ${erasing[0]!.state}: archive the month once it has finished`);
}

/**
 * Refuses (409) an archive or restore job of (project, month), started or retried, while another
 * holds the month or an erasure of the project is under way: one writer of a month's chunks at a
 * time (two could clear a chunk's rows twice or not at all). `exceptId`: the job being retried.
 */
export async function refuseSecondMonthWriter(env: Env, exceptId: string, p: { projectId: string; month: string }): Promise<void> {
  const holding = (await monthJobs(env.DB, { types: MONTH_JOB_TYPES, projectId: p.projectId, month: p.month, holdingOnly: true })).find((j) => j.id !== exceptId);
  if (holding) {
    throw new ApiError(409, 'archive_already_active', `a ${holding.type} job of ${p.projectId} ${p.month} is already ${holding.state}`, { id: holding.id, type: holding.type, state: holding.state });
  }
  const [erasing] = await monthJobs(env.DB, { types: ERASURE_JOB_TYPES, projectId: p.projectId, holdingOnly: true });
  if (erasing) {
    throw new ApiError(409, 'erasure_active', `a ${erasing.type} job of this project is ${erasing.state}: start or retry this one once it has finished`, { id: erasing.id, type: erasing.type, state: erasing.state });
  }
}

/** Rows of the chunks this job wrote and cleared (a retried job's earlier attempts included). */
async function rowsArchivedByJob(run: Run): Promise<number> {
  const chunks = await run.manifests.list(run.p.projectId, run.p.month);
  return chunks.filter((c) => c.jobId === run.jobId && c.clearedAt !== null).reduce((s, c) => s + c.rowCount, 0);
}

function parseParams(params: unknown): ArchiveParams {
  const parsed = ArchiveParams.safeParse(params);
  if (!parsed.success) throw new PermanentChunkError(`invalid archive job params: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

function openRun(env: Env, job: ChunkInput, p: ArchiveParams): Run {
  const bucket = (env as Partial<Env>).ARCHIVE;
  if (!bucket) throw new PermanentChunkError('no R2 bucket is bound (ARCHIVE): archives are unavailable');
  const config = getConfig(env);
  const { startMs, endMs } = monthBoundsMs(p.month);
  return {
    env,
    jobId: job.id,
    p,
    bucket,
    ch: clickhouse(config.clickhouse),
    manifests: manifestStore(env.DB),
    chunkRows: p.chunkRows ?? config.archive.chunkRows,
    startMs,
    endMs,
    retried: job.verifyWrites,
  };
}

export const archiveRunner: JobRunner = {
  pauseMs: () => ARCHIVE_PAUSE_MS,

  async refuseRetry(env, job) {
    const p = ArchiveParams.safeParse(job.params);
    if (p.success) await refuseSecondMonthWriter(env, job.id, p.data);
  },

  async runChunk(env: Env, job: ChunkInput): Promise<ChunkOutcome> {
    const started = Date.now();
    const p = parseParams(job.params);
    // The route refuses these; a job started some other way must not archive a month still filling.
    const refusal = manualArchiveRefusal(p.month, Date.now());
    if (refusal) throw new PermanentChunkError(`${p.month} cannot be archived yet (${refusal}): only months before the current UTC month`);
    const run = openRun(env, job, p);
    await assertSoleWriter(env, job.id, p);

    const planning = job.rowsTotal === null;
    let cursor: Cursor = (planning ? null : parseCursor(job.cursor)) ?? { phase: 'reconcile', after: 0 };
    // Progress counts the rows of this job's chunks, read from the manifest: exact whatever step was cut short.
    const outcome = (c: Cursor, before: number, rows: number, total: number, done: boolean): ChunkOutcome => ({
      cursor: JSON.stringify(c),
      maxKey: null,
      rowsTotal: Math.max(total, before + rows),
      rowsBefore: before,
      rows,
      skippedBefore: 0,
      skipped: 0,
      done,
    });

    // A cut-short step may have left an object it never recorded, or the month's payloads parked
    // in the middle of a partition drop (back they go: the chunks' clear deletes them again).
    if (planning || job.verifyWrites) {
      const unparked = await unparkPartitions(run.ch, 'event_payloads', dateTimeBounds(run.startMs, run.endMs - 1));
      if (unparked) log('archive: payloads a cut-short partition drop left parked were moved back', { job: run.jobId, month: p.month, rows: unparked });
      await removeOrphans(run);
    }

    let before: number;
    let total: number;
    if (cursor.phase === 'reconcile') {
      const next = await reconcileSlice(run, cursor.after);
      before = await rowsArchivedByJob(run);
      if (next !== null) return outcome({ phase: 'reconcile', after: next }, before, 0, job.rowsTotal ?? before + (await countPending(run)), false);
      // Every earlier chunk is settled: what is left in ClickHouse belongs to no chunk. It is
      // archived from here on.
      total = before + (await countPending(run));
      cursor = { phase: 'archive', afterMs: run.startMs - 1, afterId: '' };
      if (total === before) return outcome(cursor, before, 0, total, true);
      // A new job commits its plan first: the month's total (and so the ETA) shows from the start,
      // not after the first slice of up to ARCHIVE_SLICE_MS.
      if (planning) return outcome(cursor, before, 0, total, false);
    } else {
      if (job.verifyWrites) {
        // The chunks a cut-short step of this job was writing (recorded, not yet cleared).
        for (const c of await run.manifests.list(p.projectId, p.month)) if (c.clearedAt === null) await settleChunk(run, c);
      }
      before = await rowsArchivedByJob(run);
      total = job.rowsTotal ?? before;
    }

    // Chunks one after another until the slice's time is up, ClickHouse making the next chunks'
    // text while the one before is checked, uploaded and verified; then one clear for all.
    const deadline = started + ARCHIVE_SLICE_MS;
    const maxChunks = p.sliceChunks ?? Infinity;
    const slice = newSlice(run);
    const windows = [readWindow(run, cursor.afterMs, cursor.afterId, run.chunkRows)];
    windows[0]!.sent.catch(() => {}); // its failure is the body's and the facts', awaited below
    let windowsStarted = 1;
    let done = false;
    for (;;) {
      while (windows.length <= WINDOWS_AHEAD && windowsStarted < maxChunks && Date.now() < deadline) {
        const ahead = readWindowAfter(run, windows.at(-1)!);
        // Awaited in turn, unless a chunk before fails first.
        ahead.sent.catch(() => {});
        ahead.body.catch(() => {});
        ahead.facts.catch(() => {});
        windows.push(ahead);
        windowsStarted += 1;
      }
      const [body, facts] = await Promise.all([windows[0]!.body, windows[0]!.facts]);
      windows.shift();
      if (!body || !facts) {
        done = true;
        break;
      }
      if (windows.length) {
        await windows[0]!.sent;
        // A real timer lets the requests leave now: workerd sends a subrequest only when its event
        // loop goes idle, and the chunk's checks, upload and verification never leave it idle locally.
        await scheduler.wait(SEND_AHEAD_MS);
      }
      await writeChunk(run, body, facts, slice);
      cursor = { phase: 'archive', ...facts.last };
      if (!windows.length) break;
    }
    await clearSlice(run, slice);
    return outcome(cursor, before, slice.rows, total, done);
  },

  async complete(env: Env, job: ChunkInput): Promise<ArchiveResult> {
    const p = parseParams(job.params);
    const run = openRun(env, job, p);
    const chunks = await run.manifests.list(p.projectId, p.month);
    const mine = chunks.filter((c) => c.jobId === job.id);
    const pendingRows = await countPending(run);
    return {
      projectId: p.projectId,
      month: p.month,
      chunks: mine.length,
      rows: mine.reduce((s, c) => s + c.rowCount, 0),
      rawBytes: mine.reduce((s, c) => s + c.rawBytes, 0),
      compressedBytes: mine.reduce((s, c) => s + c.compressedBytes, 0),
      monthChunks: chunks.length,
      state: archiveState(chunks, pendingRows),
      pendingRows,
    };
  },
};
