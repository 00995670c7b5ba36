// A legacy import that throttles itself on the read latency it causes: it completes, keeps its
// controller's state in the job's row across chunk messages, and never rests longer than the
// operator's pauseMs.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { runChunkMessage } from '../src/jobs/engine';
import { jobStore } from '../src/jobs/store';
import { MAX_STEP_ROWS, MIN_STEP_ROWS, splitThrottleState, throttleView, type ThrottleState, type ThrottleView } from '../src/jobs/throttle';
import { LegacyImportParams, pacing } from '../src/legacy/params';
import { createLegacyTable, importBody, startImport, suffix, waitJob } from './backfill-helpers';
import { countEvents, createProject, waitUntil } from './helpers';

const finished = (j: { state: string }) => ['succeeded', 'failed', 'cancelled'].includes(j.state);

async function controllerOf(id: string): Promise<ThrottleView | null> {
  return throttleView((await jobStore(env.DB).get(id))!.params);
}

/** Polls the job until it ends, keeping every controller state seen on the way. */
async function watchUntilFinished(id: string) {
  const seen: ThrottleView[] = [];
  const done = await waitUntil(
    async () => {
      const view = await controllerOf(id);
      if (view) seen.push(view);
      return (await jobStore(env.DB).get(id))!;
    },
    finished,
    { timeoutMs: 90_000, intervalMs: 50 },
  );
  return { done, seen };
}

describe('self-throttling import', () => {
  it('with no pacing given, measures its readers, records its controller state and completes', async () => {
    const table = `legacy_throttle_${suffix()}`;
    const ROWS = 12_000;
    await createLegacyTable(table, ROWS);
    const p = await createProject('throttle');
    const { chunkSize: _chunkSize, pauseMs: _pauseMs, ...body } = importBody(p.id, 'citylens', table);
    const id = await startImport(body);
    const { done, seen } = await watchUntilFinished(id);
    expect(done).toMatchObject({ state: 'succeeded', rowsProcessed: ROWS, error: null });
    expect(await countEvents(p.id)).toEqual({ rows: ROWS, ids: ROWS });

    const last = (await controllerOf(id))!;
    // GET /admin/backfills/:id shows the operator the same controller state
    expect((await waitJob(id, finished)).throttle).toEqual(last);
    expect(last.baselineMs).toBeGreaterThan(0);
    expect(last.probeMs).toBeGreaterThan(0);
    expect(last.ratio).toBeGreaterThan(0);
    const bounds = pacing(LegacyImportParams.parse(body));
    for (const v of [...seen, last]) {
      expect(v.stepRows).toBeLessThanOrEqual(MAX_STEP_ROWS);
      expect(v.pauseMs).toBeLessThanOrEqual(bounds.pauseMs);
    }
  });

  it('resumes from the state in its row and never rests longer than the operator allows', async () => {
    const table = `legacy_bound_${suffix()}`;
    const ROWS = 20_000;
    await createLegacyTable(table, ROWS);
    const p = await createProject('throttle-bound');
    const MAX_PAUSE_MS = 100;
    const params = LegacyImportParams.parse(importBody(p.id, 'citylens', table, { chunkSize: 7 * MIN_STEP_ROWS, pauseMs: MAX_PAUSE_MS }));
    // As a job left it after backing off hard: working a twentieth of the time, so the controller
    // wants rests of many times a step's duration; its idle reference holds one telltale probe.
    const backedOff: ThrottleState = {
      stepRows: MIN_STEP_ROWS,
      duty: 0.05,
      pauseMs: 0,
      baselineMs: 10_000,
      baselineAtMs: Date.now(),
      idleProbesMs: [10_000],
      probeMs: null,
      ratio: null,
      congested: true,
    };
    const id = crypto.randomUUID();
    await jobStore(env.DB).create(id, 'legacy_import', { ...params, throttleState: backedOff }, Date.now());

    await runChunkMessage(env, { jobId: id, version: 0 });
    const first = (await jobStore(env.DB).get(id))!;
    expect(first.rowsProcessed).toBeGreaterThan(0);
    // The chunk went on from the stored state: its reference still holds the stored probe (a rest
    // of at most 100 ms fits one probe, so seven steps add at most seven idle ones).
    const stored = splitThrottleState(JSON.parse(first.params)).stored as ThrottleState;
    // (Whether a window of probes completed within this one chunk depends on the machine's load:
    // the whole-import test checks that probes are measured.)
    expect(stored.idleProbesMs).toContain(10_000);
    expect(stored.pauseMs).toBeLessThanOrEqual(MAX_PAUSE_MS);

    const { done, seen } = await watchUntilFinished(id);
    expect(done).toMatchObject({ state: 'succeeded', rowsProcessed: ROWS });
    expect(await countEvents(p.id)).toEqual({ rows: ROWS, ids: ROWS });
    for (const v of seen) expect(v.pauseMs).toBeLessThanOrEqual(MAX_PAUSE_MS);
  });

  it('with throttle off runs chunks of exactly chunkSize and keeps no controller state', async () => {
    const table = `legacy_fixed_${suffix()}`;
    await createLegacyTable(table, 2500);
    const p = await createProject('throttle-off');
    const id = await startImport(importBody(p.id, 'citylens', table, { chunkSize: 1000, throttle: false }));
    const progress = new Set<number>();
    const done = await waitUntil(
      async () => {
        const j = (await jobStore(env.DB).get(id))!;
        progress.add(j.rowsProcessed);
        return j;
      },
      finished,
      { timeoutMs: 60_000, intervalMs: 20 },
    );
    expect(done).toMatchObject({ state: 'succeeded', rowsProcessed: 2500 });
    for (const n of progress) expect([0, 1000, 2000, 2500]).toContain(n);
    expect(await controllerOf(id)).toBeNull();
    expect(await waitJob(id, finished)).toMatchObject({ state: 'succeeded', throttle: null });
  });
});
