// Operator actions on jobs: start, pause, resume, cancel, retry.
import type { Env } from '../env';
import { ApiError } from '../errors';
import { sendChunk } from './engine';
import { nextState, type JobAction, type JobState } from './states';
import { jobStore, type JobRow } from './store';

export async function startJob(env: Env, type: string, params: unknown): Promise<JobRow> {
  const job = await jobStore(env.DB).create(crypto.randomUUID(), type, params, Date.now());
  await sendChunk(env, job.id, job.leaseVersion);
  return job;
}

/** Progress a retry starts from: nothing counted until the job re-plans over its cursor. */
const RESET_PROGRESS: Partial<JobRow> = {
  rowsProcessed: 0,
  rowsTotal: null,
  ratePerSec: null,
  etaSec: null,
  attempts: 0,
  error: null,
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
  if (needsChunk) await sendChunk(env, id, updated.leaseVersion);
  return updated;
}
