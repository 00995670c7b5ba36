// Operator actions on jobs: start, pause, resume, cancel, retry.
import type { Env } from '../env';
import { ApiError } from '../errors';
import { sendChunk } from './queue';
import { nextState, type JobAction, type JobState } from './states';
import { jobStore, type JobRow } from './store';

/** Sends a new job's first chunk message; its id, or 503 when the queue refuses (nothing created). */
async function sendFirstChunk(env: Env, type: string): Promise<string> {
  const id = crypto.randomUUID();
  try {
    await sendChunk(env, id, FIRST_LEASE_VERSION);
  } catch (err) {
    console.error(JSON.stringify({ msg: 'job could not be enqueued', type, error: String(err) }));
    throw new ApiError(503, 'queue_unavailable', 'the job queue is unavailable; nothing was started, retry', { retryable: true }, { 'Retry-After': '5' });
  }
  return id;
}

/**
 * The first chunk message is sent before the job's row is written, so a start either fails whole
 * (nothing created: the client may simply retry) or leaves a job with its message on the way.
 */
export async function startJob(env: Env, type: string, params: unknown): Promise<JobRow> {
  const id = await sendFirstChunk(env, type);
  return jobStore(env.DB).create(id, type, params, Date.now());
}

/**
 * Starts a job unless another job of `type` whose params carry `match` is in a `blocking` state;
 * null when one is. The row is written by one conditional statement, so of concurrent starts
 * exactly one is created. A losing start's message is already sent: it finds no row and the
 * engine drops it after a few attempts (`handleJobsBatch`).
 */
export async function startExclusiveJob(env: Env, type: string, params: unknown, match: Record<string, string>, blocking: readonly JobState[]): Promise<JobRow | null> {
  const id = await sendFirstChunk(env, type);
  const row = await jobStore(env.DB).createUnlessActive(id, type, params, Date.now(), match, blocking);
  if (!row) console.log(JSON.stringify({ msg: 'job not started: another one is active; its first message will be dropped', id, type }));
  return row;
}

/**
 * Sends the first chunk of a job whose row is already written (createJobStatement). A refusing
 * queue is not the caller's failure: the job is enqueued, and the watchdog's lost-message rule
 * sends its chunk STALL_MS later.
 */
export async function sendCreatedJob(env: Env, id: string, type: string): Promise<void> {
  try {
    await sendChunk(env, id, FIRST_LEASE_VERSION);
  } catch (err) {
    console.error(JSON.stringify({ msg: 'job created; its first chunk message could not be sent, the watchdog will send it', id, type, error: String(err) }));
  }
}

/** The lease version a new job's row starts at (the schema's default). */
const FIRST_LEASE_VERSION = 0;

/** Progress a retry starts from: nothing counted until the job re-plans over its cursor. */
const RESET_PROGRESS: Partial<JobRow> = {
  rowsProcessed: 0,
  rowsTotal: null,
  // rowsSkipped stays: the rows skipped up to the cursor were counted as they were read, and the
  // re-plan can only recount those a query can see (NULLs, not an unparseable time).
  ratePerSec: null,
  etaSec: null,
  attempts: 0,
  error: null,
  result: null,
  startedAt: null,
  endedAt: null,
  // A failed or cancelled run may have left part of a chunk behind.
  verifyWrites: true,
};

export async function applyAction(env: Env, id: string, action: JobAction): Promise<JobRow> {
  const store = jobStore(env.DB);
  const job = await store.get(id);
  if (!job) throw new ApiError(404, 'job_not_found', `no backfill job ${id}`);
  const from = job.state as JobState;
  const to = nextState(from, action);
  if (!to) {
    throw new ApiError(409, 'invalid_transition', `cannot ${action} a job that is ${from}`, { state: from, action });
  }
  // A job with no chunk running moves at once, and any message already sent for it goes stale;
  // a running chunk keeps its lease and honours the request when it commits.
  const chunkRunning = from === 'running' || from === 'pausing';
  const needsChunk = to === 'enqueued';
  const updated = await store.transition(id, from, to, Date.now(), action === 'retry' ? RESET_PROGRESS : {}, !chunkRunning);
  if (!updated) throw new ApiError(409, 'invalid_transition', `the job changed state while ${action} was applied; read it and try again`, { action });
  if (needsChunk) {
    try {
      await sendChunk(env, id, updated.leaseVersion);
    } catch (err) {
      // The job is enqueued with no message on the way: the watchdog's lost-message rule sends one
      // (STALL_MS after this update). The operator's action did take effect, so it is not refused.
      console.error(JSON.stringify({ msg: 'job action applied; its chunk message could not be sent, the watchdog will send it', id, action, error: String(err) }));
    }
  }
  return updated;
}
