// Chunk messages on the jobs queue. Apart from the engine (which imports every runner), so that a
// runner may start another job without an import cycle.
import type { Env } from '../env';

export const JOBS_QUEUE = 'driftline-jobs';

/** A chunk message: the job and the lease version it expects (stale copies are no-ops). */
export interface ChunkMessage {
  jobId: string;
  version: number;
}

export async function sendChunk(env: Env, jobId: string, version: number, delayMs = 0): Promise<void> {
  const body: ChunkMessage = { jobId, version };
  await env.JOBS_QUEUE.send(body, { contentType: 'json', delaySeconds: Math.min(Math.round(delayMs / 1000), 12 * 3600) });
}
