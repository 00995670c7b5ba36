// Job state for /admin/health: what runs now and what failed, with its error text.
import type { Env } from '../env';
import { jobStore, toView, type JobView } from './store';

export interface JobsHealth {
  running: JobView[];
  failed: JobView[];
}

export async function jobsHealth(env: Env): Promise<JobsHealth> {
  const store = jobStore(env.DB);
  const [running, failed] = await Promise.all([store.inStates(['enqueued', 'running', 'pausing', 'cancelling']), store.inStates(['failed'], 20)]);
  return { running: running.map(toView), failed: failed.map(toView) };
}
