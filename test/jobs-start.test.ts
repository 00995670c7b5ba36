// Starting a job is all or nothing, and a live chunk keeps its lease however long it runs.
import { createExecutionContext, createMessageBatch, env, getQueueResult } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import worker from '../src/index';
import { handleJobsBatch, keepLease, rekickStalledJobs, STALL_MS, type ChunkMessage } from '../src/jobs/engine';
import { jobStore } from '../src/jobs/store';
import { admin, createLegacyTable, importBody, suffix, waitJob } from './backfill-helpers';
import { ADMIN_TOKEN, createProject } from './helpers';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('job start', () => {
  it('creates nothing when the job queue refuses the first chunk, so the client retry starts the job', async () => {
    const table = `legacy_start_${suffix()}`;
    await createLegacyTable(table, 50);
    const p = await createProject('start');
    const body = JSON.stringify(importBody(p.id, 'citylens', table));
    const request = () =>
      new Request('http://gw/admin/backfills', { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body });
    // The real queue binding, made to fail its sends (the outage this covers).
    const refusing = { ...env, JOBS_QUEUE: { send: () => Promise.reject(new Error('queue unavailable')), sendBatch: () => Promise.reject(new Error('queue unavailable')) } };
    const refused = await worker.fetch(request(), refusing as unknown as typeof env, createExecutionContext());
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('queue_unavailable');
    const listed = await admin('GET', '/admin/backfills');
    expect(listed.body.backfills.filter((j: { id: string }) => JSON.stringify(j).includes(p.id))).toEqual([]);
    // The retry is not refused as a duplicate (409): nothing was left behind.
    const retried = await worker.fetch(request(), env, createExecutionContext());
    expect(retried.status).toBe(202);
    const { id } = (await retried.json()) as { id: string };
    expect((await waitJob(id, (j) => j.state === 'succeeded' || j.state === 'failed')).state).toBe('succeeded');
  });

  it('applies a resume while the job queue is down, and the watchdog sends the message it could not', async () => {
    const store = jobStore(env.DB);
    const id = crypto.randomUUID();
    await store.create(id, 'legacy_import', { test: true }, Date.now());
    expect(await store.transition(id, 'enqueued', 'paused', Date.now(), {}, true)).not.toBeNull();
    const refusing = { ...env, JOBS_QUEUE: { send: () => Promise.reject(new Error('queue unavailable')), sendBatch: () => Promise.reject(new Error('queue unavailable')) } };
    const res = await worker.fetch(
      new Request(`http://gw/admin/backfills/${id}/resume`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }),
      refusing as unknown as typeof env,
      createExecutionContext(),
    );
    expect(res.status).toBe(200);
    expect(((await res.json()) as { state: string }).state).toBe('enqueued');
    const resumed = (await store.get(id))!;
    expect(resumed.state).toBe('enqueued');
    // The lost-message rule: no lease, no update for STALL_MS.
    expect(await rekickStalledJobs(env, resumed.lastUpdateAt + STALL_MS - 1)).not.toContain(id);
    expect(await rekickStalledJobs(env, resumed.lastUpdateAt + STALL_MS + 1)).toContain(id);
  });

  it('holds a first message that arrives before its job row, and drops it in the end when no row comes', async () => {
    const message = (attempts: number) => ({ id: `m${attempts}`, timestamp: new Date(), attempts, body: { jobId: crypto.randomUUID(), version: 0 } satisfies ChunkMessage });
    const batch = createMessageBatch<ChunkMessage>('driftline-jobs', [message(1), message(5)]);
    const ctx = createExecutionContext();
    await handleJobsBatch(batch as MessageBatch<unknown>, env);
    const result = await getQueueResult(batch, ctx);
    expect(result.retryMessages.map((m: { msgId: string }) => m.msgId)).toEqual(['m1']);
    expect(result.explicitAcks).toEqual(['m5']);
  });
});

describe('chunk lease', () => {
  it('is renewed while the chunk runs, and renewal stops once the watchdog fenced the chunk off', async () => {
    const store = jobStore(env.DB);
    const id = crypto.randomUUID();
    await store.create(id, 'legacy_import', { test: true }, Date.now());
    const leaseMs = 300;
    const claimed = (await store.claim(id, 0, Date.now(), Date.now() + leaseMs))!;
    const renewal = keepLease(store, id, claimed.leaseVersion, leaseMs);
    try {
      // Well past the first lease: a live chunk still holds it.
      await sleep(leaseMs * 3);
      const held = (await store.get(id))!;
      expect(held.leaseVersion).toBe(claimed.leaseVersion);
      expect(held.leaseUntil).toBeGreaterThan(claimed.leaseUntil);
      // The watchdog fences the chunk off: renewing no longer touches the job.
      const fenced = (await store.release(id, claimed.leaseVersion, Date.now()))!;
      expect(await store.renew(id, claimed.leaseVersion, Date.now() + leaseMs)).toBe(false);
      await sleep(leaseMs);
      expect((await store.get(id))!.leaseUntil).toBe(fenced.leaseUntil);
    } finally {
      renewal.stop();
    }
  });
});
