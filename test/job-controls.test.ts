// Pause, resume and the watchdog on archive and erasure jobs that are running: a paused job stops
// between its chunks and holds its month or subject; a resumed one ends as a clean run would; a
// chunk that dies holding its lease (its work half done, never committed) is re-kicked by the
// watchdog once the lease lapses, and the job still converges with nothing twice.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { archiveRunner, type ArchiveParams } from '../src/archive/archive-job';
import { erasureRunner } from '../src/erasure/erasure-job';
import { startJob } from '../src/jobs/actions';
import { chunkInput, LEASE_MS, rekickStalledJobs } from '../src/jobs/engine';
import { jobStore, type JobView } from '../src/jobs/store';
import { admin, getJob, waitJob } from './backfill-helpers';
import { chunksOf, expectConverged, insertRows, listArchives, makeRows, payloadsInClickHouse, postArchive } from './archive-helpers';
import { archiveOldChunks, byTime, countRows, insertOldEvents, JUNE, oldEvents, readArchive, startErasure, waitFinished } from './erasure-fixtures';
import { createProject } from './helpers';

const MONTH = '2026-02';
const ended = (j: JobView) => ['succeeded', 'failed', 'cancelled'].includes(j.state);

async function pauseWhenRunning(id: string, atLeastRows: number): Promise<JobView> {
  await waitJob(id, (j) => j.rowsProcessed >= atLeastRows || ended(j), 90_000);
  const pause = await admin('POST', `/admin/backfills/${id}/pause`);
  expect(pause.status, JSON.stringify(pause.body)).toBe(200);
  expect(['pausing', 'paused']).toContain(pause.body.state);
  return waitJob(id, (j) => j.state === 'paused', 60_000);
}

/** Stays paused: no progress and nothing new written while the operator waits. */
async function expectHeld(id: string, paused: JobView, written: () => Promise<number>): Promise<void> {
  const before = await written();
  await new Promise((r) => setTimeout(r, 1500));
  expect(await getJob(id)).toMatchObject({ state: 'paused', rowsProcessed: paused.rowsProcessed, cursor: paused.cursor });
  expect(await written()).toBe(before);
}

/**
 * A worker claims the job's next chunk and dies in it: the lease is taken as the engine takes it,
 * the runner runs with a crash seam, and nothing is committed. Returns when the lease lapses.
 */
async function dieHoldingLease(id: string, run: (input: ReturnType<typeof chunkInput>) => Promise<unknown>): Promise<number> {
  const now = Date.now();
  await env.DB.prepare(`UPDATE jobs SET state = 'running', lease_version = lease_version + 1, lease_until = ? WHERE id = ?`).bind(now + LEASE_MS, id).run();
  const row = (await jobStore(env.DB).get(id))!;
  await expect(run(chunkInput(row))).rejects.toThrow(/injected crash|test fault/);
  // A live lease is left alone...
  expect(await rekickStalledJobs(env, Date.now())).not.toContain(id);
  return now + LEASE_MS + 1000;
}

describe('an archive job that is running', () => {
  it("commits its plan before its first chunk: the month's total, and so the ETA, shows from the start", async () => {
    const p = await createProject('controls-archive-plan');
    await insertRows(p.id, makeRows('controls-plan', 7, Date.parse(`${MONTH}-07T00:00:00.000Z`), 60_000));
    // A job row the engine never runs: its first chunk is run here, as the engine would run it.
    const id = crypto.randomUUID();
    const row = await jobStore(env.DB).create(id, 'archive', { projectId: p.id, month: MONTH, chunkRows: 3 }, Date.now());
    try {
      const first = await archiveRunner.runChunk(env, chunkInput(row));
      expect(first).toMatchObject({ rowsTotal: 7, rowsBefore: 0, rows: 0, done: false });
      expect(await chunksOf(p.id, MONTH)).toEqual([]);
    } finally {
      await env.DB.prepare("UPDATE jobs SET state = 'cancelled', ended_at = ? WHERE id = ?").bind(Date.now(), id).run();
    }
  });

  it('pauses between job chunks, holds its month, and resumes to the same end as a clean run', async () => {
    const p = await createProject('controls-archive-pause');
    const rows = makeRows('controls-pause', 15, Date.parse(`${MONTH}-03T00:00:00.000Z`), 60_000);
    await insertRows(p.id, rows);
    const job = await startJob(env, 'archive', { projectId: p.id, month: MONTH, chunkRows: 3, sliceChunks: 1 } satisfies ArchiveParams);

    const paused = await pauseWhenRunning(job.id, 3);
    expect(paused.rowsProcessed).toBeGreaterThanOrEqual(3);
    expect(paused.rowsProcessed).toBeLessThan(15);
    await expectHeld(job.id, paused, async () => (await chunksOf(p.id, MONTH)).length);
    // What it archived so far is cleared; the rest waits in ClickHouse. The listing shows why.
    expect((await payloadsInClickHouse(p.id, MONTH)).size).toBe(15 - paused.rowsProcessed);
    expect((await listArchives(`?projectId=${p.id}`)).body.archives).toEqual([expect.objectContaining({ month: MONTH, state: 'partial', lastJobId: job.id, lastJobState: 'paused' })]);
    // The paused job still holds the month: a second archive of it is refused.
    const second = await postArchive({ projectId: p.id, month: MONTH });
    expect(second.status).toBe(409);
    expect(second.body.error).toMatchObject({ code: 'archive_already_active', details: { id: job.id, state: 'paused' } });

    const resume = await admin('POST', `/admin/backfills/${job.id}/resume`);
    expect(resume.status, JSON.stringify(resume.body)).toBe(200);
    const done = await waitJob(job.id, ended, 120_000);
    expect(done).toMatchObject({ state: 'succeeded', rowsProcessed: 15, error: null });
    const archived = await expectConverged(p.id, MONTH);
    expect([...archived.keys()].sort()).toEqual(rows.map((r) => r.id).sort());
    expect((await chunksOf(p.id, MONTH)).map((c) => c.number)).toEqual([1, 2, 3, 4, 5]);
  });

  it('a chunk that dies after verifying, before clearing and committing, is re-kicked by the watchdog; nothing is archived twice', async () => {
    const p = await createProject('controls-archive-watchdog');
    const rows = makeRows('controls-watchdog', 18, Date.parse(`${MONTH}-05T00:00:00.000Z`), 60_000);
    await insertRows(p.id, rows);
    const params = { projectId: p.id, month: MONTH, chunkRows: 3, sliceChunks: 2 } satisfies ArchiveParams;
    const job = await startJob(env, 'archive', params);
    const paused = await pauseWhenRunning(job.id, 3);
    const chunksBefore = (await chunksOf(p.id, MONTH)).length;

    const lapsed = await dieHoldingLease(job.id, (input) => archiveRunner.runChunk(env, { ...input, params: { ...params, faults: { at: 'afterVerify', mode: 'fail' } } }));
    // The dead chunk left a verified chunk whose rows are still in ClickHouse, and no progress.
    const left = await chunksOf(p.id, MONTH);
    expect(left.length).toBe(chunksBefore + 1);
    expect(left.at(-1)).toMatchObject({ verifiedAt: expect.any(Number), clearedAt: null });
    expect((await getJob(job.id)).rowsProcessed).toBe(paused.rowsProcessed);

    // ...and a lapsed one is re-kicked: the job runs on from its committed cursor.
    expect(await rekickStalledJobs(env, lapsed)).toContain(job.id);
    const done = await waitJob(job.id, ended, 120_000);
    expect(done).toMatchObject({ state: 'succeeded', rowsProcessed: 18, error: null });
    const archived = await expectConverged(p.id, MONTH);
    expect([...archived.keys()].sort()).toEqual(rows.map((r) => r.id).sort());
    expect((await chunksOf(p.id, MONTH)).map((c) => c.number)).toEqual([1, 2, 3, 4, 5, 6]);
  });
});

describe('an archive job cancelled or failed', () => {
  it('cancelled while it runs, stops between job chunks with every chunk it wrote verified and cleared; a retry through the route finishes the month', async () => {
    const p = await createProject('controls-archive-cancel');
    const rows = makeRows('controls-cancel', 15, Date.parse(`${MONTH}-09T00:00:00.000Z`), 60_000);
    await insertRows(p.id, rows);
    const job = await startJob(env, 'archive', { projectId: p.id, month: MONTH, chunkRows: 3, sliceChunks: 1 } satisfies ArchiveParams);
    await waitJob(job.id, (j) => j.rowsProcessed >= 3 || ended(j), 90_000);
    const cancel = await admin('POST', `/admin/backfills/${job.id}/cancel`);
    expect(cancel.status, JSON.stringify(cancel.body)).toBe(200);
    const cancelled = await waitJob(job.id, (j) => j.state === 'cancelled', 60_000);
    expect(cancelled.rowsProcessed).toBeLessThan(15);
    // Whatever it wrote is whole: verified, cleared, and no payload gone without its chunk.
    const archived = await expectConverged(p.id, MONTH);
    expect(archived.size).toBe(cancelled.rowsProcessed);
    expect((await payloadsInClickHouse(p.id, MONTH)).size).toBe(15 - cancelled.rowsProcessed);

    const retry = await admin('POST', `/admin/backfills/${job.id}/retry`);
    expect(retry.status, JSON.stringify(retry.body)).toBe(200);
    const done = await waitJob(job.id, ended, 120_000);
    expect(done).toMatchObject({ state: 'succeeded', rowsProcessed: 15, error: null });
    expect([...(await expectConverged(p.id, MONTH)).keys()].sort()).toEqual(rows.map((r) => r.id).sort());
    expect((await chunksOf(p.id, MONTH)).map((c) => c.number)).toEqual([1, 2, 3, 4, 5]);
  });

  it('failed by a crash after verifying, is retried through the route and converges without a second chunk', async () => {
    const p = await createProject('controls-archive-retry');
    const rows = makeRows('controls-retry', 7, Date.parse(`${MONTH}-11T00:00:00.000Z`), 60_000);
    await insertRows(p.id, rows);
    const job = await startJob(env, 'archive', { projectId: p.id, month: MONTH, chunkRows: 3, faults: { at: 'afterVerify', chunk: 2, mode: 'fail' } } satisfies ArchiveParams);
    const failed = await waitJob(job.id, ended, 90_000);
    expect(failed.state).toBe('failed');
    expect(failed.error).toContain('injected crash (test seam) afterVerify of chunk 2');
    const retry = await admin('POST', `/admin/backfills/${job.id}/retry`);
    expect(retry.status, JSON.stringify(retry.body)).toBe(200);
    const done = await waitJob(job.id, ended, 90_000);
    expect(done).toMatchObject({ state: 'succeeded', rowsProcessed: 7, error: null });
    expect([...(await expectConverged(p.id, MONTH)).keys()].sort()).toEqual(rows.map((r) => r.id).sort());
    expect((await chunksOf(p.id, MONTH)).map((c) => c.number)).toEqual([1, 2, 3]);
  });
});

describe('an erasure job that is running', () => {
  const CHUNKS = 24;
  /**
   * A device erased from 24 archive chunks it shares with another device: a commit after each
   * rewrite, so the job runs long enough (an erasure does not rest between its chunks) to be
   * paused in the middle of its rewrites on any machine.
   */
  async function subjectInManyChunks(name: string) {
    const p = await createProject(name);
    const erased = oldEvents(p.id, 'veh-gone', JUNE, 2 * CHUNKS, () => '');
    const kept = oldEvents(p.id, 'veh-kept', JUNE + 20_000, 2 * CHUNKS, () => '');
    await insertOldEvents(p.id, [...erased, ...kept]);
    const all = [...erased, ...kept].sort(byTime);
    const groups = Array.from({ length: CHUNKS }, (_, i) => all.slice(i * 4, i * 4 + 4));
    expect(groups.every((g) => g.some((e) => e.deviceId === 'veh-gone') && g.some((e) => e.deviceId === 'veh-kept'))).toBe(true);
    await archiveOldChunks(p.id, '2025-06', groups);
    return { p, erased, kept };
  }

  async function expectErased(projectId: string, kept: ReturnType<typeof oldEvents>, result: unknown) {
    expect(await countRows(projectId, 'device_id = {d:String}', { d: 'veh-gone' })).toEqual({ events: 0, payloads: 0, sessions: 0, profileOps: 0 });
    const objects = await readArchive(projectId);
    const lines = objects.flatMap((o) => o.rows);
    expect(lines.filter((r) => r.deviceId === 'veh-gone')).toEqual([]);
    // Every other row once, byte for byte.
    expect(lines.sort(byTime).map((r) => [r.id, r.payload])).toEqual(kept.map((e) => [e.id, e.payload]));
    expect(result).toMatchObject({ clickhouse: { events: 2 * CHUNKS, payloads: 0, sessions: 1, profileOps: 0 }, r2: { chunksRewritten: CHUNKS, objectsDeleted: CHUNKS, rows: 2 * CHUNKS } });
  }

  it('pauses mid-rewrite, holds its subject, and resumes to a complete erasure with exact counts', async () => {
    const { p, kept } = await subjectInManyChunks('controls-erasure-pause');
    const id = await startErasure({ projectId: p.id, deviceId: 'veh-gone' });
    const paused = await pauseWhenRunning(id, 1);
    expect(paused.rowsProcessed).toBeGreaterThanOrEqual(1);
    expect(JSON.parse(paused.cursor!).step).toBe('archive');
    await expectHeld(id, paused, async () => (await readArchive(p.id)).length);
    // Asking again for the subject answers the paused job; no second erasure starts beside it.
    const again = await admin('POST', '/admin/erasures', { projectId: p.id, deviceId: 'veh-gone' });
    expect(again).toEqual({ status: 202, body: { id, state: 'paused' } });

    expect((await admin('POST', `/admin/backfills/${id}/resume`)).status).toBe(200);
    const done = await waitFinished(id);
    expect(done.state, done.error ?? '').toBe('succeeded');
    await expectErased(p.id, kept, done.result);
  });

  it('a chunk that dies after writing a rewritten chunk, before committing, is re-kicked by the watchdog; no row is kept twice', async () => {
    const { p, kept } = await subjectInManyChunks('controls-erasure-watchdog');
    const id = await startErasure({ projectId: p.id, deviceId: 'veh-gone' });
    await pauseWhenRunning(id, 1);
    const params = (await jobStore(env.DB).get(id))!.params;
    const lapsed = await dieHoldingLease(id, (input) => erasureRunner.runChunk(env, { ...input, params: { ...JSON.parse(params), faults: { crashAt: 'archive.afterVerify' } } }));

    expect(await rekickStalledJobs(env, lapsed)).toContain(id);
    const done = await waitFinished(id);
    expect(done.state, done.error ?? '').toBe('succeeded');
    await expectErased(p.id, kept, done.result);
  });
});
