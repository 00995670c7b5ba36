// What a job type provides to the engine.
import type { Env } from '../env';
import type { ThrottleLimits } from './throttle';

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
  /** A self-throttling job's pace: how big its steps are and when it rests. Absent: no rests. */
  pace?: ChunkPace;
}

/** The throttle's pace inside one chunk (see throttle.ts). */
export interface ChunkPace {
  /** Rows for the next step (a page written between two rests). */
  stepRows(): number;
  /**
   * Awaited after each step, the last one included: rests as long as the duty cycle asks. False
   * once the chunk has used its time, so a slow pace still commits progress and honours a pause
   * or cancel soon: end the chunk at this step.
   */
  rest(): Promise<boolean>;
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

/** A job that throttles itself on the read latency it causes (see throttle.ts). */
export interface SelfThrottling {
  /** The operator's bounds, or null when the job runs at its fixed pace (`pauseMs`) instead. */
  limits(params: unknown): ThrottleLimits | null;
  /**
   * A read like the ones the job's readers make, for the engine to time while chunks run and while
   * the job is quiet. Built once per chunk (it may look up what to read).
   */
  prepareProbe(env: Env, params: unknown): Promise<() => Promise<void>>;
}

export interface JobRunner {
  /** The pause between chunks; for a self-throttling job, only when its throttle is off. */
  pauseMs(params: unknown): number;
  throttle?: SelfThrottling;
  /** One bounded chunk after `cursor`. Must be idempotent: a chunk may run again after a crash. */
  runChunk(env: Env, job: ChunkInput): Promise<ChunkOutcome>;
  /**
   * The job's last step before it is marked succeeded; must be idempotent too. What it returns
   * (a JSON value) becomes the job's `result`.
   */
  complete(env: Env, job: ChunkInput): Promise<unknown>;
  /** Follow-up work after success; a failure is logged and left to the watchdog. */
  afterSuccess?(env: Env, job: ChunkInput): Promise<void>;
  /**
   * Throws (an ApiError, 409) when a retry of this failed or cancelled job would run beside a job
   * started while it stood, which its start would have been refused beside.
   */
  refuseRetry?(env: Env, job: { id: string; params: unknown }): Promise<void>;
}
