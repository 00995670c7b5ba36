// What the erasure jobs share: their result, their progress, and running steps from a cursor.
import { monthJobs, MONTH_JOB_TYPES } from '../archive/listing';
import type { Env } from '../env';
import { PermanentChunkError, type ChunkInput, type ChunkOutcome } from '../jobs/runner';
import { ApiError } from '../errors';
import { ACTIVE, type JobState } from '../jobs/states';
import { jobStore } from '../jobs/store';
import { NO_ARCHIVE_ROWS, type ArchiveCounts } from './archive-rewrite';
import { NO_CLICKHOUSE_ROWS, type ClickHouseCounts } from './subject';

/** A job's `result`: what it removed from each store (DESIGN.md, Erasure). */
export interface ErasureResult {
  clickhouse: ClickHouseCounts;
  r2: ArchiveCounts;
  /** Device objects that held something of the subject (of the project) and were cleared. */
  deviceObjects: number;
}

export const emptyResult = (): ErasureResult => ({ clickhouse: { ...NO_CLICKHOUSE_ROWS }, r2: { ...NO_ARCHIVE_ROWS }, deviceObjects: 0 });

export function addArchiveCounts(a: ArchiveCounts, b: ArchiveCounts): ArchiveCounts {
  return { chunksRewritten: a.chunksRewritten + b.chunksRewritten, objectsDeleted: a.objectsDeleted + b.objectsDeleted, rows: a.rows + b.rows };
}

/** Work units of a job (archive chunks examined, device objects, store steps): its rowsProcessed / rowsTotal. */
export interface Progress {
  done: number;
  total: number;
}

/** What a step asks of the engine: go on in this chunk, commit the cursor first, or the job is done. */
export type StepEnd = 'continue' | 'commit' | 'done';

/** A chunk stops taking new steps after this long and yields to the next message. */
const CHUNK_BUDGET_MS = 20_000;

export function parseParams<T>(schema: { safeParse(v: unknown): { success: true; data: T } | { success: false; error: { message: string } } }, params: unknown): T {
  const parsed = schema.safeParse(params);
  if (!parsed.success) throw new PermanentChunkError(`invalid job parameters: ${parsed.error.message}`);
  return parsed.data;
}

/**
 * Runs steps from the committed cursor until one must be committed before the next may run, the
 * job is done, or the chunk's time is up. Counts live in the cursor, so a step cut short and run
 * again counts once. (Progress is kept there too: a retry resets the job's own figures.)
 */
export async function runSteps<C extends { progress: Progress }>(
  job: ChunkInput,
  initial: () => C,
  step: (c: C, units: { n: number }) => Promise<StepEnd>,
): Promise<ChunkOutcome> {
  const c = job.cursor ? (JSON.parse(job.cursor) as C) : initial();
  const before = c.progress.done;
  const units = { n: 0 };
  const deadline = Date.now() + CHUNK_BUDGET_MS;
  let end: StepEnd;
  do end = await step(c, units);
  while (end === 'continue' && Date.now() < deadline);
  c.progress.done = before + units.n;
  c.progress.total = Math.max(c.progress.total, c.progress.done);
  return {
    cursor: JSON.stringify(c),
    maxKey: null,
    rowsTotal: c.progress.total,
    rowsBefore: before,
    rows: units.n,
    skippedBefore: 0,
    skipped: 0,
    done: end === 'done',
  };
}

/** The result a finished job committed in its cursor (complete() is handed the cursor from before its last chunk). */
export async function committedResult(env: Env, jobId: string): Promise<ErasureResult> {
  const row = await jobStore(env.DB).get(jobId);
  const cursor = row?.cursor ? (JSON.parse(row.cursor) as { result?: ErasureResult }) : null;
  if (!cursor?.result) throw new Error(`job ${jobId} has no committed result`);
  return cursor.result;
}

/** A job in one of these states is under way (a paused one resumes where it stopped). */
export const UNDER_WAY: readonly JobState[] = [...ACTIVE, 'paused'];

/**
 * Refuses (409) an erasure or project deletion, started or retried, while a job that writes the
 * project's rows is under way: an archive or restore run could put a subject's payloads into a new
 * chunk after the rewrite, an import could bring its events back.
 */
export async function refuseProjectWriters(env: Env, projectId: string): Promise<void> {
  const store = jobStore(env.DB);
  for (const type of ['archive', 'restore']) {
    const [j] = await store.others('', type, { projectId }, UNDER_WAY);
    if (j) throw new ApiError(409, 'archive_active', `an ${type} job of this project is ${j.state}; erase once it has finished (or cancel it)`, { id: j.id, type, state: j.state });
  }
  const [imp] = await store.others('', 'legacy_import', { projectId }, UNDER_WAY);
  if (imp) throw new ApiError(409, 'import_active', `a legacy import into this project is ${imp.state}; erase once it has finished (or cancel it)`, { id: imp.id, state: imp.state });
}

/**
 * Waits out an archive or restore job of the project: one that started before this job existed
 * could write the subject into a chunk this job has already passed. Such a job fails at its next
 * chunk once it sees this one (it never writes beside an erasure), so a retry of this step a few
 * seconds later goes through; the engine retries it with back-off.
 */
export async function assertNoArchiveWriter(env: Env, projectId: string): Promise<void> {
  const holders = await monthJobs(env.DB, { types: MONTH_JOB_TYPES, projectId, holdingOnly: true });
  if (holders.length) {
    const j = holders[0]!;
    throw new Error(`a ${j.type} job (${j.id}) of ${projectId} ${j.month ?? ''} is ${j.state}: waiting for it to stop before erasing`);
  }
}
