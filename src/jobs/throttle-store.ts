// The throttle's state in the job's row, inside its params JSON: it outlives chunk messages and
// restarts without a column of its own, and is written under the chunk's lease.
import { and, eq, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/d1';
import { jobs } from '../db/schema';
import { THROTTLE_STATE_KEY, type ThrottleState } from './throttle';

/** Records the controller's state; false when the chunk lost its lease meanwhile. */
export async function saveThrottleState(d1: D1Database, id: string, leaseVersion: number, state: ThrottleState): Promise<boolean> {
  const rows = await drizzle(d1)
    .update(jobs)
    .set({ params: sql`json_set(${jobs.params}, ${'$.' + THROTTLE_STATE_KEY}, json(${JSON.stringify(state)}))` })
    .where(and(eq(jobs.id, id), eq(jobs.leaseVersion, leaseVersion)))
    .returning({ id: jobs.id });
  return rows.length > 0;
}
