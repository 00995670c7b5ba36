// What a job type provides to the engine.
import type { Env } from '../env';

/** A chunk failure that a retry cannot mend (a source that is gone or wrong): the job fails at once. */
export class PermanentChunkError extends Error {
  override name = 'PermanentChunkError';
}

export interface ChunkInput {
  id: string;
  params: unknown;
  cursor: string | null;
  maxKey: string | null;
  /** Null until the job is planned (first chunk, or first chunk after a retry). */
  rowsTotal: number | null;
  rowsProcessed: number;
  /** Rows read that could not be used (skipped), up to the cursor. */
  rowsSkipped: number;
  /** The chunk may have been written before: check what is there instead of assuming nothing. */
  verifyWrites: boolean;
}

export interface ChunkOutcome {
  cursor: string | null;
  maxKey: string | null;
  rowsTotal: number;
  /** Rows done before this chunk (re-counted when the chunk planned the job). */
  rowsBefore: number;
  rows: number;
  /** Rows skipped before this chunk (re-counted when the chunk planned the job), and in it. */
  skippedBefore: number;
  skipped: number;
  done: boolean;
  /** The chunk found the job may overlap earlier writes; later chunks verify too. */
  verifyWrites?: boolean;
}

export interface JobRunner {
  pauseMs(params: unknown): number;
  /** One bounded chunk after `cursor`. Must be idempotent: a chunk may run again after a crash. */
  runChunk(env: Env, job: ChunkInput): Promise<ChunkOutcome>;
  /**
   * The job's last step before it is marked succeeded; must be idempotent too. What it returns
   * (a JSON value) becomes the job's `result`.
   */
  complete(env: Env, job: ChunkInput): Promise<unknown>;
  /** Follow-up work after success; a failure is logged and left to the watchdog. */
  afterSuccess?(env: Env, job: ChunkInput): Promise<void>;
}
