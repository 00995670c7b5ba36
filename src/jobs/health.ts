// Job state for /admin/health: what runs now and what failed, with its error text.
import type { Env } from '../env';
import { ACTIVE } from './states';
import { jobStore, toView, type JobView } from './store';

export interface JobsHealth {
  running: JobView[];
  failed: JobView[];
}

export async function jobsHealth(env: Env): Promise<JobsHealth> {
  const store = jobStore(env.DB);
  try {
    const [running, failed] = await Promise.all([store.inStates(ACTIVE), store.inStates(['failed'], 20)]);
    return { running: running.map(toView), failed: failed.map(toView) };
  } catch (err) {
    // The database's own reason, not only the query text the ORM wraps it in.
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
    throw new Error(`cannot read job state from D1: ${cause}`);
  }
}
