// Concurrent starts of one import create one job; a chunk's lease has a ceiling, so one that hangs
// is fenced off in the end.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import { keepLease, STALL_MS } from '../src/jobs/engine';
import { ACTIVE } from '../src/jobs/states';
import { jobStore } from '../src/jobs/store';
import { admin, createLegacyTable, importBody, suffix, waitJob } from './backfill-helpers';
import { createProject } from './helpers';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('concurrent starts of one import', () => {
  it('create exactly one job: one 202, the others 409 import_already_active', async () => {
    const table = `legacy_race_${suffix()}`;
    await createLegacyTable(table, 40);
    const p = await createProject('race');
    const body = importBody(p.id, 'citylens', table);
    const answers = await Promise.all(Array.from({ length: 5 }, () => admin('POST', '/admin/backfills', body)));
    const started = answers.filter((a) => a.status === 202);
    expect(started).toHaveLength(1);
    const refused = answers.filter((a) => a.status !== 202);
    expect(refused.map((a) => [a.status, a.body.error.code])).toEqual(Array.from({ length: 4 }, () => [409, 'import_already_active']));
    const jobsOfDataset = await jobStore(env.DB).others('', 'legacy_import', { projectId: p.id, dataset: 'citylens' });
    expect(jobsOfDataset.map((j) => j.id)).toEqual([started[0]!.body.id]);
    expect((await waitJob(started[0]!.body.id, (j) => j.state === 'succeeded' || j.state === 'failed')).state).toBe('succeeded');
    // Once it is over, a new import of the dataset may start.
    const again = await admin('POST', '/admin/backfills', body);
    expect(again.status).toBe(202);
    expect((await waitJob(again.body.id, (j) => j.state === 'succeeded' || j.state === 'failed')).state).toBe('succeeded');
  });

  it('are decided by one conditional write in D1, whatever the interleaving', async () => {
    const store = jobStore(env.DB);
    const match = { projectId: `race-${suffix()}`, dataset: 'citylens' };
    const ids = Array.from({ length: 5 }, () => crypto.randomUUID());
    const rows = await Promise.all(ids.map((id) => store.createUnlessActive(id, 'legacy_import', { ...match, n: id }, Date.now(), match, [...ACTIVE, 'paused'])));
    const created = rows.filter((r) => r !== null);
    expect(created).toHaveLength(1);
    expect(created[0]).toMatchObject({ type: 'legacy_import', state: 'enqueued', leaseVersion: 0 });
    expect(await store.others('', 'legacy_import', match)).toHaveLength(1);
    // A finished job blocks nothing.
    await store.settle(created[0]!.id, 0, 'succeeded', Date.now());
    expect(await store.createUnlessActive(crypto.randomUUID(), 'legacy_import', match, Date.now(), match, [...ACTIVE, 'paused'])).not.toBeNull();
  });
});

describe('chunk lease ceiling', () => {
  it('stops renewing once the chunk has held its lease for the ceiling, so the watchdog finds it stalled', async () => {
    const store = jobStore(env.DB);
    const id = crypto.randomUUID();
    await store.create(id, 'legacy_import', { test: true }, Date.now());
    const leaseMs = 300;
    const maxHoldMs = 900;
    const claimed = (await store.claim(id, 0, Date.now(), Date.now() + leaseMs))!;
    const renewal = keepLease(store, id, claimed.leaseVersion, leaseMs, maxHoldMs);
    const ceiling = Date.now() + maxHoldMs; // at or after the one keepLease took
    try {
      // Well past the ceiling: the chunk (still "running", never stopped) was renewed meanwhile,
      // but never beyond the ceiling.
      await sleep(maxHoldMs * 3);
      const held = (await store.get(id))!;
      expect(held.leaseVersion).toBe(claimed.leaseVersion);
      expect(held.leaseUntil).toBeGreaterThan(claimed.leaseUntil);
      expect(held.leaseUntil).toBeLessThanOrEqual(ceiling);
      // Its lease has lapsed: the watchdog's query finds the job, and renewals have stopped.
      expect((await store.stalled(Date.now(), STALL_MS)).map((j) => j.id)).toContain(id);
      await sleep(leaseMs);
      expect((await store.get(id))!.leaseUntil).toBe(held.leaseUntil);
    } finally {
      renewal.stop();
      await store.settle(id, claimed.leaseVersion, 'failed', Date.now(), { error: 'test' });
    }
  });
});
