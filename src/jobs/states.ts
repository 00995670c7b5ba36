// Pure core of the job engine: which operator action each state allows, and progress arithmetic.

export const JOB_STATES = ['enqueued', 'running', 'pausing', 'paused', 'cancelling', 'cancelled', 'succeeded', 'failed'] as const;
export type JobState = (typeof JOB_STATES)[number];

export type JobAction = 'pause' | 'resume' | 'cancel' | 'retry';

/**
 * The state an operator action moves a job to, or null when the state does not allow it.
 * A running chunk is never interrupted: pause and cancel on a running job are requests
 * (`pausing`, `cancelling`) that the chunk honours when it commits.
 */
export function nextState(state: JobState, action: JobAction): JobState | null {
  switch (action) {
    case 'pause':
      return state === 'running' ? 'pausing' : state === 'enqueued' ? 'paused' : null;
    case 'resume':
      return state === 'paused' ? 'enqueued' : state === 'pausing' ? 'running' : null;
    case 'cancel':
      return state === 'running' || state === 'pausing' ? 'cancelling' : state === 'enqueued' || state === 'paused' ? 'cancelled' : null;
    case 'retry':
      return state === 'failed' || state === 'cancelled' ? 'enqueued' : null;
  }
}

/** States in which a chunk may be claimed and run. */
export const RUNNABLE: readonly JobState[] = ['enqueued', 'running'];
/** States the watchdog looks after (a chunk, or the settling of a pause/cancel request, is owed). */
export const ACTIVE: readonly JobState[] = ['enqueued', 'running', 'pausing', 'cancelling'];
export const TERMINAL: readonly JobState[] = ['cancelled', 'succeeded', 'failed'];

export interface Progress {
  rowsProcessed: number;
  rowsTotal: number;
  ratePerSec: number | null;
  etaSec: number | null;
}

/** Weight of the newest chunk in the smoothed rate: steady enough for an ETA, quick to follow change. */
const RATE_WEIGHT = 0.3;

/**
 * Progress after a chunk of `rows` that took `elapsedMs` of wall time (work plus the yield after it).
 * The rate is smoothed over chunks; the ETA is what remains at that rate.
 */
export function advance(prev: Progress, rows: number, elapsedMs: number): Progress {
  const rowsProcessed = prev.rowsProcessed + rows;
  const remaining = Math.max(0, prev.rowsTotal - rowsProcessed);
  // A first chunk that only planned (no rows yet) says nothing of the rate: a 0 would drag the
  // smoothed rate down, and the ETA up, for many chunks after it.
  if (prev.ratePerSec === null && rows === 0) return { rowsProcessed, rowsTotal: prev.rowsTotal, ratePerSec: null, etaSec: remaining === 0 ? 0 : null };
  const instant = (rows * 1000) / Math.max(1, elapsedMs);
  const ratePerSec = prev.ratePerSec === null ? instant : prev.ratePerSec * (1 - RATE_WEIGHT) + instant * RATE_WEIGHT;
  const etaSec = remaining === 0 ? 0 : ratePerSec > 0 ? Math.ceil(remaining / ratePerSec) : null;
  return { rowsProcessed, rowsTotal: prev.rowsTotal, ratePerSec: Math.round(ratePerSec), etaSec };
}

/** Delay before the n-th automatic retry of a failed chunk: 2, 4, 8 ... seconds, capped at a minute. */
export function chunkRetryDelaySec(attempts: number): number {
  return Math.min(60, 2 ** Math.max(1, attempts));
}

/** A chunk that failed this many times in a row fails the job. */
export const MAX_CHUNK_ATTEMPTS = 5;
